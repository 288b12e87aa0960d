import pytest

from recbole_reaseq.data.datasets import dataset_stats
from tests.conftest import SHARED_DATA, needs_beauty


@needs_beauty
def test_beauty_published_figures():
    stats = dataset_stats("amazon-beauty", SHARED_DATA)
    assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    assert stats["mean_length"] == pytest.approx(198502 / 22363)
    assert round(stats["mean_length"], 2) == 8.88
    assert stats["max_length"] == 204
    # ../shared/datasets/README.md: title 99.94 %, categories 100 %, brand 82.7 %, price 95.2 %
    assert round(stats["pct_items_with_title"], 2) == 99.94
    assert stats["pct_items_with_category"] == 100.0
    assert round(stats["pct_items_with_brand"], 1) == 82.7
    assert round(stats["pct_items_with_price"], 1) == 95.2


def test_ml100k_embedded_figures():
    stats = dataset_stats("ml-100k")
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    assert stats["mean_length"] == pytest.approx(100000 / 943)
    assert stats["pct_items_with_title"] == 100.0 and stats["pct_items_with_brand"] == 0.0


def test_tiny_stats_by_hand(tmp_path):
    folder = tmp_path / "hand"
    folder.mkdir()
    (folder / "hand.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        "a\tx\t1\na\ty\t2\nb\tx\t1\nb\tz\t3\nb\ty\t4\n")
    (folder / "hand.item").write_text(
        "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float\n"
        "x\tX cream\tBeauty Makeup\tacme\t3.5\ny\t\tBeauty\t\t\nz\tZ gel\tBeauty\tacme\t\n"
        "w\tW unused\tBeauty\tacme\t1\n")
    stats = dataset_stats("hand", str(tmp_path))
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 3, 5)
    assert stats["mean_length"] == 2.5 and stats["density"] == pytest.approx(5 / 6)
    assert stats["pct_items_with_title"] == pytest.approx(200 / 3)
    assert stats["pct_items_with_brand"] == pytest.approx(200 / 3)
    assert stats["pct_items_with_price"] == pytest.approx(100 / 3)
