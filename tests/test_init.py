"""`sslops init`: the survey of a folder as a user brings it, the params it proposes, and how it writes them.

The whole command, through `dvc repro` of the folder it set up, runs in
`test_pipeline_dvc.py::test_the_own_images_tutorial_runs_as_written`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from sslops.commands.init import Proposal, budgets_for, data_folder, fit_budget, propose, task_name
from sslops.config import Project
from sslops.data.survey import survey
from sslops.errors import SslopsError
from sslops.orchestration.overrides import write_params
from test_pipeline_dvc import write_photos

MAX_PIXELS = 25_000_000


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "photos"
    write_photos(root)
    return root


def broken(tmp_path: Path, photos: Path, layout: dict[str, str | None]) -> Path:
    """A folder of `layout`: relative path -> a photo to copy there (by its path in `photos`), or None for an empty
    file, or a text for a text file."""
    root = tmp_path / "broken"
    for rel, source in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            path.touch()
        elif (photos / source).is_file():
            shutil.copy(photos / source, path)
        else:
            path.write_text(source)
    return root


def test_a_photo_folder_is_surveyed_from_its_headers(photos: Path) -> None:
    found = survey(photos, "unlabeled", MAX_PIXELS)
    assert found.layout == "imagefolder" and found.classes == ["class0", "class1", "class2", "class3"]
    assert found.counts == {"train": dict.fromkeys(found.classes, 16), "test": dict.fromkeys(found.classes, 6)}
    assert found.unlabeled == 20 and len(found.sizes) == 64 + 24 + 20
    assert found.gray == 22 and sum(found.modes.values()) == 108  # every fifth file is saved grayscale
    assert all(40 <= side <= 90 for side in found.shorter_sides())


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no images found"),
        ({"train/cat/a.png": "train/class0/0.png", "test/cat/a.png": "test/class0/0.png"}, "one class (cat)"),
        ({"cats/a.png": "train/class0/0.png", "dogs/b.png": "train/class1/1.jpg"}, "class folders without train/"),
        ({"a.png": "train/class0/0.png", "b.png": "train/class0/4.png"}, "only unlabeled images"),
        ({"train/a/x.png": "train/class0/0.png", "loose.png": "train/class0/0.png"}, "mixed layouts"),
        ({"test/a/x.png": "test/class0/0.png"}, "no train/ folder beside test/"),
        (
            {"train/a/x.png": "train/class0/0.png", "train/b/y.png": "train/class1/1.jpg"},
            "no test/ folder beside train/",
        ),
    ],
    ids=["empty", "one-class", "no-splits", "unlabeled-only", "mixed", "no-train", "no-test"],
)
def test_a_folder_it_cannot_use_is_refused_saying_why(tmp_path, photos, layout, message) -> None:
    root = broken(tmp_path, photos, layout)
    root.mkdir(exist_ok=True)
    with pytest.raises(SslopsError, match=re.escape(message)):
        survey(root, "unlabeled", MAX_PIXELS)


def test_every_file_it_cannot_use_is_named_with_its_reason(tmp_path, photos) -> None:
    """Not only the first: one look at the message shows everything to fix."""
    root = broken(
        tmp_path,
        photos,
        {
            "train/a/ok.png": "train/class0/0.png",
            "train/a/empty.png": None,
            "train/b/ok.jpg": "train/class1/1.jpg",
            "train/b/notes.jpg": "not a picture",
            "train/b/readme.txt": "hello",
            "train/stray.png": "train/class0/0.png",
            "test/c/x.png": "test/class0/0.png",
        },
    )
    (root / "test" / "d").mkdir()
    with pytest.raises(SslopsError) as err:
        survey(root, "unlabeled", MAX_PIXELS)
    text = str(err.value)
    assert "7 file(s) cannot be used" in text  # test/d: empty, and a class train/ lacks
    for expected in (
        "empty.png: empty (0 bytes)",
        "notes.jpg: cannot be read as an image",
        "readme.txt: not an image file",
        "stray.png: a file directly under train/",
        "test/d: class folder is empty",
        "test/c: a class with no train/c/ folder",
    ):
        assert expected in text


def test_budgets_names_and_the_folder_must_fit_the_pipeline(tmp_path) -> None:
    assert budgets_for(16) == ["8/class", 1.0]
    assert budgets_for(120) == ["10/class", "50/class", 1.0]
    assert budgets_for(6000) == ["10/class", "50/class", "250/class", "1000/class", 1.0]
    assert task_name("data/My Photos (2024)") == "my-photos-2024"
    project = Project(REPO)
    assert data_folder(project, REPO / "data" / "fashion-mnist") == "data/fashion-mnist"
    with pytest.raises(SslopsError, match="not a folder inside .*copy the images there first"):
        data_folder(project, tmp_path)
    with pytest.raises(SslopsError, match="that is data/ itself; name the folder of one dataset under it"):
        data_folder(project, REPO / "data")  # it advised `cp -r data data/data`


def test_the_proposal_replaces_the_tasks_and_their_recipe_choices(photos) -> None:
    project = Project(REPO)
    found = survey(photos, "unlabeled", MAX_PIXELS)
    alone = propose(project, found, "data/photos", replace_tasks=True)
    assert alone.side == 55 and alone.channels == 3 and alone.removed_tasks == ["fashion-mnist", "digits"]
    assert alone.updates["tasks.photos"]["budgets"] == ["8/class", 1.0]
    assert "finetune.chosen.digits" in alone.deletions and "tasks.fashion-mnist" in alone.deletions
    beside = propose(project, found, "data/photos", replace_tasks=False, side=32)
    assert beside.side == 32 and beside.removed_tasks == [] and beside.deletions == []


def test_a_long_pretraining_is_cut_to_fit_and_a_short_one_kept() -> None:
    kept = Proposal("t", {}, [], [], None, 3, [1.0])
    assert fit_budget(kept, 600_000, 20 * 60, 256, 1000) == "pretrain.images 600,000: about 20 min here"
    assert "pretrain.images" not in kept.updates
    cut = Proposal("t", {}, [], [], None, 3, [1.0])
    assert "600,000 -> 300,000: about 30 min here instead of about 60 min" in fit_budget(cut, 600_000, 3600, 256, 1000)
    assert cut.updates["pretrain.images"] == 300_000
    floor = Proposal("t", {}, [], [], None, 3, [1.0])
    fit_budget(floor, 600_000, 36_000, 256, 1000)
    assert floor.updates["pretrain.images"] == 256_000  # never under pretrain.min_steps steps


def test_params_are_written_keeping_comments_quotes_and_nulls(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    original = path.read_text()
    task = {
        "kind": "classification",
        "format": "imagefolder",
        "root": "data/photos",
        "classes": ["a", "b"],
        "budgets": ["8/class", 1.0],
    }
    write_params(path, {"prepare.resize.side": 55, "tasks.photos": task}, ["tasks.digits", "finetune.chosen.digits"])
    text = path.read_text()
    assert 'cron: "0 2 * * *"' in text and "  size: null" in text and "# the pretraining dataset" in text
    assert 'budgets: ["8/class", 1.0]' in text and "digits:" not in text.split("finetune:")[0]
    assert len(text.splitlines()) < len(original.splitlines())
    with pytest.raises(SslopsError, match="side"):
        write_params(path, {"prepare.resize.side": -1})
    assert path.read_text() == text  # a value the stages would refuse: nothing written


def test_a_side_that_is_no_size_is_refused_before_anything_is_read(capsys) -> None:
    from sslops.cli import main

    assert main(["init", "data/anything", "--side", "0"]) == 2
    assert "--side 0: the side must be a positive number of pixels" in capsys.readouterr().err
