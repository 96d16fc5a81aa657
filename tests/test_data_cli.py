"""Wrong data inputs through train.py, as a user gives them: one sentence, exit status 2, no traceback."""
import pytest

from train_helpers import run_script


def manifest(tmp_path, *lines):
    path = tmp_path / "train.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def not_a_video(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a video file")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["directory", "one_bad", "four_bad", "weights"])
def test_bad_data_gives_one_sentence(tmp_path, case):
    folder = tmp_path / "videos"
    folder.mkdir()
    extra = []
    if case == "directory":  # the only line names a folder: one clip, fewer than data.batch_size=8
        path = manifest(tmp_path, f"{folder} 0")
        expected = ("error: data.batch_size=8 is larger than the 1 training clips each of the 1 devices gets; "
                    "lower data.batch_size or add data.")
    elif case == "one_bad":
        path = manifest(tmp_path, f"{not_a_video(folder, 'a.mp4')} 0")
        extra = ["data.batch_size=1"]
        expected = f"error: none of the 1 videos of manifest(s) {path} could be read; check the paths, " \
                   "data.video_root and data.decoder."
    elif case == "four_bad":
        path = manifest(tmp_path, *(f"{not_a_video(folder, f'{i}.mp4')} {i % 2}" for i in range(4)))
        extra = ["data.batch_size=2"]
        expected = f"error: none of the 4 videos of manifest(s) {path} could be read; check the paths, " \
                   "data.video_root and data.decoder."
    else:
        path = manifest(tmp_path, f"{not_a_video(folder, 'a.mp4')} 0")
        extra = ["data.weights=[1,2]"]
        expected = "error: data.weights has 2 values for 1 train manifests; give one weight per manifest or null."
    out = run_script("train.py", "data=kinetics", f"data.train_manifest={path}", "data.num_workers=0",
                     "print_config=false", "trainer.max_steps=2", *extra, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == expected
