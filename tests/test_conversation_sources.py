"""What the simulated user says: the replay source (real corpus turns), scripts (and their errors),
the llm source against a real local OpenAI-compatible server (lines, cache, [END], replays that never
contact it, servers that fail or hang), TTS failures, and the optional dialogue judge."""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from duplexgym.agents.evaluation.live import (
    evaluate_live,
    replay_check_live,
    rescore_record,
)
from duplexgym.envs.conversation import ConversationEnv
from duplexgym.envs.user_lines import (
    DEFAULT_SCRIPT,
    ReplayLines,
    UserSourceError,
    load_script,
    parse_line,
)
from duplexgym.rewards.record import EpisodeRecord

from duplexgym.constants import FRAME_SAMPLES, SAMPLE_RATE
from tests.chat_server import ChatServer
from tests.conftest import REPO
from tests.test_conversation import SCRIPT, Scripted, play


class UserServer:
    """A real OpenAI-compatible chat-completions server on 127.0.0.1 playing the user (and the
    dialogue judge): deterministic. For a user-line request (the system prompt says "You play the
    USER") it reads the fenced transcript and answers ``"line N about WORD"`` (N = the user turns
    so far, WORD = the assistant's last word, or "silence"), or ``[END]`` once ``end_after`` user
    turns were said; ``mode="noline"`` answers with punctuation only. For a judge request it rates
    turn-taking 5 minus the number of overlap notes (at least 1), the other two scales 3.
    ``mode="hang"``: sends the reply's headers, then one byte of it every 0.5 s until stopped."""

    def __init__(self, end_after: int = 99, mode: str = "ok"):
        self.end_after, self.mode = end_after, mode
        self.requests, self.bodies = 0, []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with server._lock:
                    server.requests += 1
                    server.bodies.append(body)
                reply = server.answer(body["messages"])
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    if server.mode == "hang":
                        for i in range(len(data)):
                            if server._stopped.wait(0.5):
                                return
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self, messages) -> str:
        match = re.search(r"<transcript>(.*)</transcript>", messages[-1]["content"], re.S)
        turns = json.loads(json.loads('"' + match.group(1) + '"'))  # the fenced JSON list
        if "You play the USER" in messages[0]["content"]:
            said = sum(1 for t in turns if t["speaker"] == "USER")
            if self.mode == "noline":
                return "*** ..."
            if said >= self.end_after:
                return "[END]"
            last = [t["text"] for t in turns if t["speaker"] == "ASSISTANT"]
            word = re.sub(r"[^a-z]", "", last[-1].split()[-1].lower()) if last else "silence"
            return f'USER: "line {said} about {word or "speech"}"'
        overlaps = sum(1 for t in turns if "overlaps" in t.get("note", ""))
        return json.dumps({"turn_taking": max(1, 5 - overlaps), "instruction_following": 3, "task_competence": 3})

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stopped.set()
        self._httpd.shutdown()
        self._httpd.server_close()


# ----------------------------------------------------------------------------- replay


def source_track(corpus, dialogue, speaker):
    """The synthetic corpus' rendered dialogue (its source file), one speaker's channel."""
    import soundfile as sf

    audio, rate = sf.read(str(Path(corpus) / "source" / f"{dialogue}.wav"), dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE
    return audio[:, "AB".index(speaker)]


def test_replay_source_plays_the_speakers_real_turns_in_order(small_corpus):
    from duplexgym.envs.corpus import ReplayCorpus

    corpus = ReplayCorpus(small_corpus)
    src = ReplayLines(corpus)
    ids = src.dialogue_ids()
    assert ids and all(re.fullmatch(r"syn\d{4}\.[AB]", i) for i in ids)
    with_words = with_bcs = 0
    for did in ids:
        turns, _ = src.turns(did)
        starts = [u.origin["start_s"] for u in turns]
        assert starts == sorted(starts)
        for u in turns:
            # the audio is the speaker's own channel of the recording, sample for sample (stitched from
            # the segments that hold it)
            track = source_track(small_corpus, u.origin["dialogue"], u.origin["speaker"])
            lo, hi = u.origin["samples"]  # 24 kHz samples of the dialogue
            np.testing.assert_array_equal(u.audio[:hi - lo], track[lo:hi])
            assert len(u.audio) % FRAME_SAMPLES == 0 and u.speech_s[-1][1] - u.speech_s[0][0] >= 1.0
            with_words += u.words is not None
            with_bcs += bool(u.human_backchannels_s)
    assert with_words > 0 and with_bcs > 0
    env = ConversationEnv(small_corpus, user="replay", obs_mode="codes", action_mode="tokens", max_s=12.0)
    info = play(env, Scripted("answer", 4, 15), {"dialogue": ids[0], "user_seed": 0})
    said = [e for e in info["live"]["schedule"] if e["kind"] == "turn"]
    assert [e["origin"]["start_s"] for e in said] == [u.origin["start_s"] for u in src.turns(ids[0])[0]][:len(said)]


# ----------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script, message", [
    ({}, r"dialogues: required field is missing"),
    ({"dialogues": []}, r"dialogues: expected at least 1 item"),
    ({"dialogues": [{"id": "a", "goal": "g", "lines": []}]}, r"dialogues\[0\]\.lines: expected at least 1 item"),
    ({"dialogues": [{"id": "a", "goal": "g", "lines": ["..."]}]}, r"dialogues\[0\]\.lines: line 0 \('...'\) has no words"),
    ({"dialogues": [{"id": "a", "goal": "g", "lines": ["hi"]}, {"id": "a", "goal": "g", "lines": ["yo"]}]},
     r"dialogue id 'a' appears twice"),
    ({"dialogues": [{"id": "a", "goal": "g", "task": "chat", "lines": ["hi"]}]},
     r"dialogues\[0\]\.task: unknown value 'chat'; known: daily, correction, entity"),
    ({"dialogues": [{"id": "a", "goal": "g", "line": ["hi"]}]}, r"unknown field 'line'; did you mean 'lines'"),
    ({"dialogues": [{"id": "a b", "goal": "g", "lines": ["hi"]}]}, r"dialogues\[0\]\.id"),
    ({"dialogues": [{"id": "a", "goal": "g", "voice": "bob", "lines": ["hi"]}]}, r"dialogues\[0\]\.voice"),
    ([1, 2], r"a script is a mapping"),
])
def test_bad_scripts_name_the_field(small_corpus, script, message):
    with pytest.raises(UserSourceError, match=message):
        load_script(script)
    with pytest.raises(ValueError, match=message):
        ConversationEnv(small_corpus, user="script", script=script, obs_mode="waveform", action_mode="tokens")


def test_script_files_name_the_file_and_the_example_runs(small_corpus, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dialogues:\n  - id: a\n    goal: g\n    lines: [hi, '']\n")
    with pytest.raises(UserSourceError, match=r"bad\.yaml: dialogues\[0\]\.lines\[1\]"):
        load_script(bad)
    (tmp_path / "broken.yaml").write_text("dialogues: [\n")
    with pytest.raises(UserSourceError, match=r"broken\.yaml: not valid YAML"):
        load_script(tmp_path / "broken.yaml")
    with pytest.raises(UserSourceError, match=r"missing\.yaml: cannot read the script"):
        load_script(tmp_path / "missing.yaml")
    example = REPO / "configs" / "live" / "example.yaml"
    assert len(load_script(example).dialogues) == 3 and len(load_script(None).dialogues) == len(DEFAULT_SCRIPT["dialogues"])
    env = ConversationEnv(small_corpus, user="script", script=str(example), obs_mode="waveform", action_mode="tokens",
                          max_s=10.0)
    assert env.dialogue_ids == ["daily-cinema", "correction-hotel", "entity-dinner"]
    info = play(env, Scripted("answer", 6, 15), {"dialogue": "daily-cinema", "user_seed": 0})
    assert info["live"]["schedule"][0]["text"] == "hi I want to see a film this weekend"
    assert info["live"]["schedule"][0]["origin"]["voice"] == "awb"


def test_no_flite_is_a_clear_error_and_a_tts_failure_fails_the_dialogue(small_corpus, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no flite on PATH
    with pytest.raises(ValueError, match="flite"):
        ConversationEnv(small_corpus, user="script", obs_mode="waveform", action_mode="tokens")
    monkeypatch.undo()
    script = {"dialogues": [{"id": "u", "goal": "g", "voice": "slt",
                             "lines": [f"a line never spoken before {time.time_ns()}", "and another one"]}]}
    env = ConversationEnv(small_corpus, user="script", script=script, obs_mode="waveform", action_mode="tokens",
                          max_s=8.0)
    monkeypatch.setenv("PATH", str(tmp_path))  # flite goes away after the env was built
    info = play(env, Scripted("answer", 6, 15), {"dialogue": "u", "user_seed": 0})
    assert "TTS failed for voice 'slt'" in info["failed"] and "flite" in info["failed"]
    terms = info["reward_terms"]
    assert terms["reward"] == 0.0 and "user" in terms["failed"] and terms["events"] == []
    assert info["n_frames"] < 100  # ended at once, at the first turn


# ----------------------------------------------------------------------------- llm


def llm_env(corpus, url, tmp_path, **kw):
    llm = {"base_url": url, "model": "user-sim", "cache_dir": str(tmp_path / "cache"), "backoff_s": 0.0,
           **kw.pop("llm", {})}
    return ConversationEnv(corpus, user="llm", llm=llm, script=SCRIPT, obs_mode="waveform", action_mode="tokens",
                           max_s=kw.pop("max_s", 14.0), record_dir=tmp_path / "records", **kw)


def test_llm_user_lines_cache_end_and_replays_without_the_server(small_corpus, tmp_path):
    with UserServer(end_after=3) as srv:
        env = llm_env(small_corpus, srv.url, tmp_path)
        info = play(env, Scripted("answer", 6, 20), {"dialogue": "t1", "user_seed": 0})
        turns = [e for e in info["live"]["schedule"] if e["kind"] == "turn"]
        assert turns[0]["text"] == SCRIPT["dialogues"][0]["lines"][0]  # the script opens
        assert turns[1]["text"].startswith("line 1 about ") and turns[2]["text"].startswith("line 2 about ")
        assert info["live"]["end"] == "exhausted" and info["live"]["lines"] == [t["text"] for t in turns]
        first = srv.requests
        assert first == 3  # two lines and the [END]
        body = srv.bodies[0]
        assert body["temperature"] == 0 and body["seed"] == 0 and "<transcript>" in body["messages"][-1]["content"]
        assert "book a table" in body["messages"][0]["content"]  # the task's goal
        again = play(env, Scripted("answer", 6, 20), {"dialogue": "t1", "user_seed": 0})
        assert srv.requests == first and again["live"] == info["live"]  # every line from the cache
    result = replay_check_live(info["record"])  # the server is gone: replays speak the recorded lines
    assert result["ok"], result
    assert any("not contacted" in n for n in result["notes"])


@pytest.mark.parametrize("make_server, llm, expect", [
    (lambda: ChatServer(mode="always_500"), {"max_retries": 1}, r"user LLM at .*: gave up after 2 attempts.*HTTP 500"),
    (lambda: UserServer(mode="hang"), {"timeout_s": 0.5, "max_retries": 0},
     r"gave up after 1 attempts.*timed out after 0.5 s"),
    (lambda: UserServer(mode="noline"), {}, r"holds no line to say"),
])
def test_servers_that_fail_or_hang_fail_the_dialogue_and_are_counted(small_corpus, tmp_path, make_server, llm, expect):
    with make_server() as srv:
        t0 = time.perf_counter()
        env = llm_env(small_corpus, srv.url, tmp_path, llm=llm)
        info = play(env, Scripted("answer", 6, 20), {"dialogue": "t1", "user_seed": 0})
        assert time.perf_counter() - t0 < 20
        assert re.search(expect, info["failed"]), info["failed"]
        assert info["reward_terms"]["reward"] == 0.0
        summary = evaluate_live(small_corpus, "silent", user="llm", dialogues=2, max_s=12.0, obs_mode="waveform",
                                action_mode="tokens", script=SCRIPT, progress=False,
                                llm={"base_url": srv.url, "model": "m", "backoff_s": 0.0, "use_cache": False, **llm})
    assert summary["failed"] == 2 and summary["dialogues"] == 2
    assert summary["reward_mean"] is None and summary["answered_share"] is None
    assert all(re.search(expect, row["failed"]) for row in summary["per_dialogue"])


def test_llm_params_errors_name_the_field(small_corpus):
    with pytest.raises(ValueError, match=r"llm\.model: required field is missing"):
        ConversationEnv(small_corpus, user="llm", llm={"base_url": "http://127.0.0.1:9/v1"}, obs_mode="waveform",
                        action_mode="tokens")
    with pytest.raises(ValueError, match=r"llm\.base_url: must start with http"):
        ConversationEnv(small_corpus, user="llm", llm={"base_url": "localhost:8000", "model": "m"},
                        obs_mode="waveform", action_mode="tokens")
    assert parse_line("USER: **\"Hello there.\"**", 40) == "Hello there."
    assert parse_line("\n[END]\n", 40) is None
    assert parse_line(" ".join(["word"] * 60), 10) == " ".join(["word"] * 10)


# ----------------------------------------------------------------------------- the judge


def test_the_dialogue_judge_scores_replays_and_fails_loudly(small_corpus, tmp_path):
    with UserServer() as srv:
        judge = {"base_url": srv.url, "model": "judge", "weight": 1.0, "cache_dir": str(tmp_path / "judge")}
        env = ConversationEnv(small_corpus, user="script", script=SCRIPT, obs_mode="waveform", action_mode="tokens",
                              max_s=10.0, judge=judge, record_dir=tmp_path / "rec")
        info = play(env, Scripted("cut_in", 6, 25), {"dialogue": "t1", "user_seed": 0})
        term = info["reward_terms"]["terms"]["judge"]
        assert term["metrics"]["instruction_following"] == 3 and 1 <= term["metrics"]["turn_taking"] <= 4
        assert term["value"] == pytest.approx((np.mean([term["metrics"][k] for k in
                                                         ("turn_taking", "instruction_following", "task_competence")]) - 1) / 4)
        n = srv.requests
        silent = play(env, Scripted("answer", 999, 1), {"dialogue": "t1", "user_seed": 0})
        assert silent["reward_terms"]["terms"]["judge"]["metrics"]["agent_silent"] and srv.requests == n  # 1s, no call
    result = replay_check_live(info["record"])  # judge taken from the record: its server is gone
    assert result["ok"], result
    record = EpisodeRecord.load(info["record"])
    assert json.dumps(rescore_record(record), sort_keys=True) == json.dumps(record.reward_terms, sort_keys=True)
    with ChatServer(mode="always_500") as bad:
        env = ConversationEnv(small_corpus, user="script", script=SCRIPT, obs_mode="waveform", action_mode="tokens",
                              max_s=8.0, judge={"base_url": bad.url, "model": "j", "max_retries": 0, "use_cache": False})
        info = play(env, Scripted("answer", 6, 15), {"dialogue": "t1", "user_seed": 0})
    terms = info["reward_terms"]
    assert "judge" in terms["failed"] and "judge" not in terms["terms"] and "failed" not in info  # never scored
