import pytest

from channels_ws_metrics.close_codes import CloseCodeLabels


@pytest.mark.parametrize("code", range(1000, 1016))
def test_close_code_labels_keep_protocol_codes(code):
    assert CloseCodeLabels()(code) == str(code)


@pytest.mark.parametrize(
    ("code", "label"),
    [(3000, "3xxx"), (3999, "3xxx"), (4000, "4xxx"), (4999, "4xxx")],
)
def test_close_code_labels_bucket_application_codes(code, label):
    assert CloseCodeLabels()(code) == label


@pytest.mark.parametrize("code", [0, 999, 1016, 2999, 5000, 65535, -1, None, "1000", 1000.5, [1000]])
def test_close_code_labels_map_anything_else_to_other(code):
    assert CloseCodeLabels()(code) == "other"


def test_close_code_labels_keep_chosen_application_codes():
    labels = CloseCodeLabels(keep=(3001, 4401))

    assert labels(3001) == "3001"
    assert labels(4401) == "4401"
    assert labels(4402) == "4xxx"
