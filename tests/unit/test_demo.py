"""The demo's own run folder: a second `bash scripts/demo.sh` replaces the first demo's run, nothing else."""

from tuneforge.demo import _earlier_demo, sample_data_path


def test_only_an_earlier_demos_folder_makes_way_for_the_demo(tmp_path):
    demo, other, empty = tmp_path / "demo", tmp_path / "mine", tmp_path / "empty"
    for folder, data in ((demo, sample_data_path()), (other, tmp_path / "notes.txt")):
        folder.mkdir()
        (folder / "config.yaml").write_text(f"data: {data}\nmethod: lora\n")
    empty.mkdir()
    assert _earlier_demo(demo, sample_data_path())
    assert not _earlier_demo(other, sample_data_path())  # a run of the user's: train refuses to replace it
    assert not _earlier_demo(empty, sample_data_path()) and not _earlier_demo(
        tmp_path / "none", sample_data_path()
    )


def test_a_bad_demo_setting_stops_it_before_the_model_loads(monkeypatch, tmp_path):
    import pytest

    import tuneforge
    from tuneforge.demo import run_demo
    from tuneforge.errors import TuneforgeError

    monkeypatch.setattr(tuneforge, "load", lambda *a, **k: pytest.fail("the model loaded first"))
    earlier = tmp_path / "demo"  # an earlier demo's run: it makes way only for a demo that will run
    earlier.mkdir()
    (earlier / "config.yaml").write_text(f"data: {sample_data_path()}\nmethod: lora\n")
    for steps in (-1, 0):  # 0 was taken for "not given" and trained the demo's 30 steps
        with pytest.raises(TuneforgeError, match="max_steps must be >= 1"):
            run_demo(output_dir=str(earlier), max_steps=steps)
    assert (earlier / "config.yaml").is_file()
