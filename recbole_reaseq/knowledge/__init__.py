"""Multi-agent knowledge reasoning (ReaSeq Section 2.1.1) and knowledge encoding; import submodules directly."""
