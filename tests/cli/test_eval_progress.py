"""Progress when stderr is not a terminal (nohup, CI, a log file): ``eval``, ``eval --tasks`` and
``generate --num-samples`` print plain lines with tokens, tok/s and an ETA, at the start, at
least every ``INTERVAL_S`` seconds, and at the end (CliRunner's stderr is not a terminal)."""

import io
import sys
from pathlib import Path

import pytest

import lmforge.cli.progress_lines as progress_lines
from lmforge.cli.progress_lines import ProgressLines
from lmforge.config import ModelConfig

sys.path.insert(0, str(Path(__file__).parents[1]))
from data_fixtures import workspace_with_best_checkpoint  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_start_every_interval_and_end():
    out, clock = io.StringIO(), FakeClock()
    with ProgressLines(out, prefix="eval ", interval=60, clock=clock) as lines:
        advance = lines.start("best test", 1000)
        clock.now = 1.0
        advance(100)  # within the minute: no line
        clock.now = 61.0
        advance(400)  # 500 tokens in 61 s; 500 more at that rate take 61 s
        clock.now = 122.0
        advance(500)
    assert out.getvalue().splitlines() == [
        "eval best test | started | 1,000 tokens",
        "eval best test | 500/1,000 tokens (50.0%) | 8 tok/s | eta 1m 01s",
        "eval best test | 1,000/1,000 tokens (100.0%) | 8 tok/s | eta 0s",
        "eval best test | done | 1,000 tokens in 2m 02s | 8 tok/s",
    ]


def test_a_new_part_ends_the_last_and_an_error_prints_no_end():
    out, clock = io.StringIO(), FakeClock()
    with pytest.raises(RuntimeError):
        with ProgressLines(out, interval=60, clock=clock) as lines:
            lines.start("a", 10)(10)
            clock.now = 2.0
            lines.start("b", 5)
            raise RuntimeError("stopped")
    assert out.getvalue().splitlines() == [
        "a | started | 10 tokens",
        "a | done | 10 tokens in 2s | 5 tok/s",
        "b | started | 5 tokens",
    ]


def test_skipped_units_count_for_the_eta_not_the_rate():
    out, clock = io.StringIO(), FakeClock()
    lines = ProgressLines(out, interval=0, edges=False, clock=clock)
    lines.start("s", 300)
    clock.now = 10.0
    lines.skip_to(100)  # the first sample of 100 tokens stopped at once
    lines.advance(50)
    assert out.getvalue().splitlines() == ["s | 150/300 tokens (50.0%) | 5 tok/s | eta 30s"]
    lines.finish()  # edges=False: no end line
    assert len(out.getvalue().splitlines()) == 1


@pytest.fixture(scope="module")
def ws_dir(tmp_path_factory):
    """A workspace with a byte-level wikitext-2 and one run `tiny` with a best checkpoint."""
    model_config = ModelConfig(vocab_size=257, block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    return workspace_with_best_checkpoint(tmp_path_factory.mktemp("progress"), model_config, test_docs=2)


@pytest.fixture
def run_cli(runner, ws_dir, monkeypatch):
    """The CLI with a line after every batch (an interval of 0 s)."""
    from lmforge.cli.main import app

    monkeypatch.setattr(progress_lines, "INTERVAL_S", 0.0)
    return lambda *args: runner.invoke(app, ["--workspace", str(ws_dir), *args], prog_name="lmforge")


def progress_of(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def test_eval_prints_progress_lines_when_not_a_terminal(run_cli):
    result = run_cli("eval", "best", "--split", "validation,test", "--max-tokens", "200", "--batch-size", "2")
    assert result.exit_code == 0, result.stderr
    for split in ("validation", "test"):
        lines = progress_of(result.stderr, f"eval best {split} | ")
        assert lines[0] == f"eval best {split} | started | 200 tokens"
        running = lines[1:-1]
        assert running and all("/200 tokens (" in line and " tok/s | eta " in line for line in running)
        assert running[-1].startswith(f"eval best {split} | 200/200 tokens (100.0%)")
        assert lines[-1].startswith(f"eval best {split} | done | 200 tokens in ") and lines[-1].endswith(
            " tok/s"
        )
    assert "best" in result.stdout  # the table still goes to stdout


def test_eval_quiet_prints_no_progress(run_cli):
    result = run_cli("--quiet", "eval", "best", "--split", "test", "--max-tokens", "64")
    assert result.exit_code == 0, result.stderr
    assert not progress_of(result.stderr, "eval ")


def test_generate_num_samples_prints_progress_lines(run_cli):
    result = run_cli("generate", "best", "ab", "--num-samples", "3", "--max-tokens", "5", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    lines = progress_of(result.stderr, "generate best ")
    assert lines[0] == "generate best sample 1/3 | started | 15 tokens"
    assert any(line.startswith("generate best sample 3/3 | ") for line in lines)
    assert all(" tok/s | eta " in line for line in lines[1:-1]) and len(lines) > 2
    assert lines[-1].startswith("generate best sample 3/3 | done | ")
    assert not progress_of(result.stdout, "generate ")  # the text on stdout stays clean


def test_generate_one_sample_has_no_start_or_end_line(run_cli):
    result = run_cli("generate", "best", "ab", "--max-tokens", "3", "--greedy")
    assert result.exit_code == 0, result.stderr
    lines = progress_of(result.stderr, "generate best ")
    assert lines and not any(" | started" in line or " | done" in line for line in lines)
