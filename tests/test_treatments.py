"""The treatment model: the paper's notation and the authors' folder names, both directions."""

import pytest

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.splits import REDUCED_PER_CLASS
from caffe_transfer.model.treatments import Kind, authors_grid, parse

WEIGHT_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


def test_grid_is_the_authors_170_folders(reference):
    released = sorted(p.name for p in (reference / "results").iterdir() if p.is_dir())
    assert sorted(t.name for t in authors_grid()) == released
    assert len(released) == 170


@pytest.mark.parametrize("treatment", authors_grid(), ids=lambda t: t.name)
def test_every_folder_name_parses_back_to_itself(treatment):
    assert parse(treatment.name) == treatment


@pytest.mark.parametrize("text, n, split, folder", [
    ("baseA", None, 0, "half0A"),
    ("baseB", None, "natman", "halfnatmanB"),
    ("AnB", 3, 0, "transfer0A0B_1_3"),
    ("BnA", 5, 1, "transfer1B1A_1_5"),
    ("AnA", 2, 3, "transfer3A3A_1_2"),
    ("BnB", 4, 2, "transfer2B2B_1_4"),
    ("AnB+", 7, 0, "transfer-ft0A0B_1_7"),
    ("BnA+", 5, 1, "transfer-ft1B1A_1_5"),
    ("A3B+", None, 0, "transfer-ft0A0B_1_3"),
    ("AnB", 2, "natman", "transfernatmanAB_1_2"),
    ("random", 4, None, "nolearn_1_4"),
    ("full", None, None, "netbase"),
    ("reduced-250", None, None, "reduced-0250"),
])
def test_paper_notation_names_the_authors_folder(text, n, split, folder):
    t = parse(text, n=n, split=split)
    assert t.name == folder
    assert parse(folder) == t


def test_notation_printed_back():
    assert parse("transfer-ft1B1A_1_5").notation == "B5A+"
    assert parse("half2B").notation == "baseB"
    assert parse("nolearn_1_4").notation == "random4"
    assert parse("transfer0A0A_1_3").family == "BnB"  # the authors' selffers are A->A
    assert parse("transfer0B0A_1_3").family == "AnB"
    assert parse("transfer-ft0A0B_1_3").family == "AnB+"


def test_frozen_transfer_copies_and_freezes_first_n_and_renames_the_rest():
    roles = parse("transfer0A0B_1_3").layer_roles(WEIGHT_LAYERS)
    assert [r.name for r in roles] == ["conv1", "conv2", "conv3", "conv4-new", "conv5-new",
                                       "fc6-new", "fc7-new", "fc8-new"]
    assert [r.copied_from for r in roles] == ["half0A"] * 3 + [None] * 5
    assert [r.frozen for r in roles] == [True] * 3 + [False] * 5


def test_fine_tuned_transfer_copies_without_freezing():
    roles = parse("transfer-ft0A0B_1_3").layer_roles(WEIGHT_LAYERS)
    assert [r.copied_from for r in roles] == ["half0A"] * 3 + [None] * 5
    assert not any(r.frozen for r in roles)


def test_n7_still_renames_fc8():
    roles = parse("transfer1B1A_1_7").layer_roles(WEIGHT_LAYERS)
    assert [r.renamed for r in roles] == [False] * 7 + [True]


def test_random_frozen_freezes_filler_layers_without_copying_or_renaming():
    roles = parse("nolearn_1_4").layer_roles(WEIGHT_LAYERS)
    assert [r.frozen for r in roles] == [True] * 4 + [False] * 4
    assert not any(r.copied_from or r.renamed for r in roles)


def test_bases_learn_everything():
    for name in ("half0A", "netbase", "reduced-0010"):
        roles = parse(name).layer_roles(WEIGHT_LAYERS)
        assert not any(r.frozen or r.copied_from or r.renamed for r in roles)


def test_datasets_and_whose_mean():
    t = parse("transfer0B0A_1_2")
    assert (t.train_set, t.val_set, t.mean_set) == ("half0A_train", "half0A_valid", "half0B_train")
    assert parse("transfernatmanAB_1_1").mean_set == "halfnatmanA_train"
    assert parse("half3B").mean_set == "half3B_train"
    assert parse("nolearn_1_2").train_set == "whole_train"
    r = parse("reduced-0005")
    assert (r.train_set, r.val_set, r.schedule) == ("reduced0005_train", "whole_valid", "reduced")
    assert parse("netbase").schedule == "paper"


def test_base_of_a_transfer():
    assert parse("transfer-ft1A1B_1_6").base == parse("half1A")
    assert parse("transfernatmanBA_1_3").base == parse("halfnatmanB")
    assert parse("half1A").base is None and parse("nolearn_1_1").base is None


def test_kinds():
    assert {t.kind for t in authors_grid()} == set(Kind)
    assert [t.per_class for t in authors_grid() if t.kind is Kind.REDUCED] == list(REDUCED_PER_CLASS)


@pytest.mark.parametrize("text, n, split, needle", [
    ("AxB", 3, 0, "unknown treatment 'AxB'"),
    ("AnB", 0, 0, "n in 1..7"),
    ("AnB", 8, 0, "n in 1..7"),
    ("AnB", None, 0, "n in 1..7"),
    ("AnB", 3, None, "needs a split"),
    ("AnB", 3, 4, "needs a split: got '4'"),
    ("AnB+", 3, "natman", "natural/man-made"),
    ("AnA", 3, "natman", "natural/man-made"),
    ("baseA", 3, 0, "takes no n"),
    ("random", 3, 0, "takes no split"),
    ("random", 9, None, "n in 1..7"),
    ("reduced-7", None, None, "images per class"),
    ("transfer0A0B_1_8", None, None, "n in 1..7"),
    ("transfer0A1B_1_3", None, None, "unknown treatment"),
    ("transfer0A0B_1_3", 3, None, "folder name"),
])
def test_bad_names_get_one_line_errors_listing_what_is_valid(text, n, split, needle):
    with pytest.raises(CaffeTransferError) as err:
        parse(text, n=n, split=split)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message
