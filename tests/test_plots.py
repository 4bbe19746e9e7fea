"""The pictures a person reads: the training reward curve and the episode timeline (matplotlib)."""

import numpy as np
from duplexgym.agents.evaluation.timeline import write_timeline
from duplexgym.agents.training.plots import reward_curve_figure, write_reward_curve
from matplotlib.image import imread

ROWS = [{"iteration": i, "reward_mean": {"pause": -1.0 + 0.5 * i, "turn": -0.5}, "score_mean": {"pause": -0.9 + 0.5 * i},
         "kl": 0.01 * i} for i in range(4)]


def test_reward_curve_has_labelled_panels_a_line_per_axis_and_a_title():
    fig = reward_curve_figure(ROWS, axes=("pause", "turn"), title="run-7: GRPO on pause, turn")
    rewards, kl = fig.axes
    labels = [line.get_label() for line in rewards.lines if not line.get_label().startswith("_")]
    assert labels == ["pause: episode reward", "pause: axis score", "turn: episode reward"]
    assert [t.get_text() for t in rewards.get_legend().get_texts()] == labels
    pause = rewards.lines[0]
    np.testing.assert_array_equal(pause.get_xdata(), [1, 2, 3, 4])  # iterations count from 1
    np.testing.assert_allclose(pause.get_ydata(), [-1.0, -0.5, 0.0, 0.5])
    assert rewards.get_ylabel() and kl.get_xlabel() == "iteration" and "KL" in kl.get_ylabel()
    np.testing.assert_allclose(kl.lines[0].get_ydata(), [0.0, 0.01, 0.02, 0.03])
    assert all(float(t).is_integer() for t in kl.get_xticks())
    assert fig.get_suptitle() == "run-7: GRPO on pause, turn"


def test_reward_curve_png_and_svg(tmp_path):
    png = write_reward_curve(tmp_path / "curve.png", ROWS, axes=("pause", "turn"), title="t", svg=True)
    pixels = imread(str(png))
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600
    assert "<svg" in (tmp_path / "curve.svg").read_text()[:500]
    # missing values (a failed axis in an iteration, NaN KL) leave gaps, not errors
    rows = [{"iteration": 0, "reward_mean": {}, "kl": None}, {"iteration": 1, "reward_mean": {"pause": 0.2}, "kl": float("nan")}]
    write_reward_curve(tmp_path / "gaps.png", rows, axes=("pause",))


def test_timeline_draws_rows_events_and_the_reward(tmp_path):
    path = write_timeline(tmp_path / "t.png", 6.0, user_spans=[(0.5, 2.0), (3.0, 5.0)], agent_spans=[(0.0, 2.5), (5.2, 6.0)],
                          reference_spans=[(0.0, 2.6)], forced_s=2.0, events={"event_s": 1.0, "interruption_end_s": 5.0},
                          reward=0.25, title="interruption segment x", axis="interruption", svg=True)
    rgb = (imread(str(path))[..., :3] * 255).round().astype(int)
    colours = {tuple(c) for c in rgb.reshape(-1, 3)}
    for name, colour in (("user", (31, 119, 180)), ("agent", (255, 127, 14)), ("forced", (139, 69, 19)),
                         ("event", (214, 39, 40)), ("event end", (148, 103, 189))):
        assert colour in colours, name
    svg = (tmp_path / "t.svg").read_text()
    for text in ("reward +0.250", "barge-in onset", "interruption end", "forced prefix", "time in the segment (s)"):
        assert text in svg, text
