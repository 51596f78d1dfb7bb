"""`python -m eagle_demo generate` end to end on a tiny checkpoint, as a user runs it.

Most tests call the command's `main` in this process (a new Python would spend ~6 s importing torch
for each); the text-only answer, the corrupt image and the offline hub model go through `python -m eagle_demo`."""

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from eagle_demo.cli import main
from tests.media_factory import make_corrupt_file, make_image, make_video


def cli_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eagle_demo", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli(capsys):
    """`python -m eagle_demo ARGS` as `main(ARGS)`: its exit code and what it printed."""
    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = root / "model"
    assert main(["tiny", "--out", str(model), "--layout", "eagle_chat"]) == 0
    return {"model": str(model),
            "wide": str(make_image(root / "wide.png", (1000, 400))),
            "tall": str(make_image(root / "tall.jpg", (300, 900))),
            "video": str(make_video(root / "clip.mp4", frames=12, size=(64, 48), fps=6)),
            "corrupt": str(make_corrupt_file(root / "photo.png"))}


def generate(run, files, *args):
    done = run("generate", "--model", files["model"], "--temperature", "0", "--max-new-tokens", "6", *args)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("media,tiles", [
    ([], []),
    (["--image", "wide"], [4]),  # 1000x400: a 3x1 grid and the thumbnail
    (["--image", "wide", "--image", "tall"], [4, 4]),
    (["--video", "video", "--frames", "4"], [1, 1, 1, 1]),
])
def test_json_answer_for_text_images_and_video(cli, files, media, tiles):
    args = [files.get(a, a) for a in media]
    run = cli_process if not media else cli  # the text-only answer through the real entry point
    done = generate(run, files, "--prompt", "What do you see?", "--max-tiles", "4", "--json", *args)
    result = json.loads(done.stdout)
    assert set(result) == {"text", "prompt_token_ids", "token_ids", "num_tiles"}
    assert result["num_tiles"] == tiles
    assert len(result["token_ids"]) <= 6
    assert len(result["prompt_token_ids"]) > 256 * sum(tiles)


def test_text_streams_to_stdout_and_matches_json(cli, files):
    plain = generate(cli, files, "--prompt", "Hello there", "--image", files["wide"]).stdout
    as_json = json.loads(generate(cli, files, "--prompt", "Hello there", "--image", files["wide"], "--json").stdout)
    assert plain == as_json["text"] + "\n"


@pytest.mark.parametrize("args,message", [
    (["--image", "corrupt"], "photo.png is not an image"),
    (["--image", "/no/such/file.png"], "file.png"),
    (["--max-tiles", "2000"], "Max tiles per image must be a whole number from 1 to 24."),
    (["--max-new-tokens", "0"], "Max new tokens must be a whole number from 1 to 4,096."),
    (["--temperature", "nan"], "Temperature must be a number from 0.0 to 1.5."),
    (["--seed", str(2**70)], "Seed must be a whole number"),
])
def test_bad_input_fails_with_one_clear_line(cli, files, args, message):
    run = cli_process if args[0] == "--image" and args[1] == "corrupt" else cli  # one through the real entry point
    done = run("generate", "--model", files["model"], "--prompt", "x", *[files.get(a, a) for a in args])
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and message in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_model_offline_fails_cleanly(files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: a process of its own
    done = cli_process("generate", "--model", "nvidia/Eagle2-404B", "--prompt", "x")
    assert done.returncode == 1 and "local checkpoint folder" in done.stderr


def test_a_cpu_run_states_its_expected_wait_on_stderr(cli, files):
    done = generate(cli, files, "--prompt", "What is this?", "--image", files["wide"], "--json")
    tiles = sum(json.loads(done.stdout)["num_tiles"])
    # the seconds follow this process's measured pace (other tests' turns, a busy machine): not asserted
    assert re.search(rf"^First word in about \d+ s on this CPU \({tiles} image tiles, ", done.stderr), done.stderr
