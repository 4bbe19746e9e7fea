"""Parity of duplexgym's PersonaPlex port with NVIDIA's own code, on the tiny random PersonaPlex.

The official ``LMGen`` (NVIDIA/personaplex, its fork of moshi 0.1.0, which imports as ``moshi`` too)
runs in a child process from a source checkout (``--fork DIR``: the folder holding the fork's
``moshi`` package, i.e. ``personaplex/moshi``); duplexgym's agent runs here on stock moshi with the
same weights (``save_tiny_personaplex``: 16 depformer steps in the fork's layout), both greedy:

1. the official prompt phases (a voice prompt of random codes, 6 silence frames, the wrapped text
   prompt, 6 silence frames) then a random user stream: the official output of live call ``t + 1``
   must equal the agent's action at env frame ``t`` (the fork answers one call later);
2. the official voice ``.pt`` the fork writes (``save_voice_prompt_embeddings``) against
   :func:`~duplexgym.agents.policies.personaplex.voice_embeddings_of` (embeddings and cache), and the
   agent prompted with the fork's ``.pt`` instead of the codes gives the same actions;
3. :func:`~duplexgym.agents.policies.personaplex.check_moshi_package` refuses the fork when it is the
   ``moshi`` on the path.

    python benchmarks/personaplex_parity.py --fork /path/to/personaplex/moshi

Writes ``benchmarks/results/personaplex_parity.json``; exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_FORK_SCRIPT = r'''
import json, sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from moshi.models.lm import LMModel, LMGen
from safetensors.torch import load_file
work = sys.argv[2]
cfg = json.load(open(f"{work}/config.json"))
kwargs = dict(cfg)
lm = LMModel(**kwargs).eval()
lm.load_state_dict({k: v.float() for k, v in load_file(f"{work}/model.safetensors").items()}, strict=True)
inputs = np.load(f"{work}/inputs.npz")
voice, user, ids = inputs["voice"], inputs["user"], inputs["text_ids"].tolist()
results = {}
for mode in ("audio", "embeddings"):
    gen = LMGen(lm, device="cpu", use_sampling=False, sample_rate=24000, frame_rate=12.5, audio_silence_frame_cnt=6,
                text_prompt_tokens=ids, save_voice_prompt_embeddings=(mode == "audio"))
    if mode == "audio":
        gen.voice_prompt, gen.voice_prompt_audio = f"{work}/voice.wav", np.zeros((1, 1920))
        gen._encode_voice_prompt_frames = lambda mimi: iter(torch.from_numpy(voice[j][None, :, None]) for j in range(len(voice)))
    else:
        gen.load_voice_prompt_embeddings(f"{work}/voice.pt")
    outs = []
    with torch.no_grad(), gen.streaming(1):
        gen.step_system_prompts(None)
        for t in range(user.shape[0]):
            out = gen.step(torch.from_numpy(user[t][None, :, None]))
            outs.append(None if out is None else out[0, :9, 0].tolist())
    results[mode] = outs
from duplexgym.agents.policies.personaplex import check_moshi_package
try:  # duplexgym refuses to run on the fork
    check_moshi_package()
    results["fork_refused"] = None
except RuntimeError as exc:
    results["fork_refused"] = str(exc)
json.dump(results, open(f"{work}/fork_out.json", "w"))
'''


class _FixedPrompt:
    """A prompt source that hands the agent fixed :class:`PromptFrames` (what the fork was given)."""

    def __init__(self, frames):
        self.frames = frames

    def voice_of(self, mimi, lm):
        return None

    def frames_for(self, axis, tokenizer_path, mimi, lm):
        return self.frames


def main(argv=None) -> int:
    from duplexgym.agents.policies.checkpoint import load_models
    from duplexgym.agents.policies.moshi_agent import MoshiAgent
    from duplexgym.agents.policies.personaplex import (
        TEACHER_PROMPT,
        build_prompt_frames,
        load_voice_embeddings,
        save_tiny_personaplex,
        text_prompt_ids,
        voice_embeddings_of,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fork", required=True, help="the folder holding NVIDIA/personaplex's moshi package")
    parser.add_argument("--voice-frames", type=int, default=9)
    parser.add_argument("--user-frames", type=int, default=40)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "personaplex_parity.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pp-parity-"))
    save_tiny_personaplex(work)
    models = load_models(f"personaplex:{work}")
    rng = np.random.default_rng(0)
    voice = rng.integers(0, 2048, (args.voice_frames, 8))
    user = rng.integers(0, 2048, (args.user_frames, 8))
    ids = text_prompt_ids(TEACHER_PROMPT, models.text_tokenizer)
    np.savez(work / "inputs.npz", voice=voice, user=user, text_ids=np.asarray(ids))
    subprocess.run([sys.executable, "-c", _FORK_SCRIPT, args.fork, str(work)], check=True)
    fork = json.loads((work / "fork_out.json").read_text())

    frames = build_prompt_frames(ids, voice)
    P = frames.frames
    report = {"prompt_frames": P, "phases": frames.phases, "user_frames": args.user_frames}
    ours = {}
    for mode, prompt_voice in (("audio", voice), ("embeddings", load_voice_embeddings(work / "voice.pt", models.lm.dim))):
        source = load_models(f"personaplex:{work}")
        with MoshiAgent(source, temp=0.0, temp_text=0.0, prompt=_FixedPrompt(build_prompt_frames(ids, prompt_voice))) as agent:
            agent.reset({"forced_frames": 0})
            ours[mode] = np.stack([agent.act(user[t]) for t in range(args.user_frames)])
    for mode in ("audio", "embeddings"):
        official = np.array(fork[mode][1:])  # live call t + 1 (the fork's call P + t + 1) <-> env frame t
        n = min(len(official), args.user_frames)
        equal = official[:n] == ours[mode][:n]
        report[f"{mode}_frames_compared"] = int(n)
        report[f"{mode}_frames_equal"] = int(equal.all(axis=1).sum())
    written = load_voice_embeddings(work / "voice.pt", models.lm.dim)
    computed = voice_embeddings_of(models.lm, voice)
    report["voice_embeddings_max_abs_diff"] = float((written.embeddings - computed.embeddings).abs().max())
    report["voice_cache_equal"] = bool((written.cache == computed.cache).all())
    report["fork_refused_with"] = fork["fork_refused"]
    ok = (report["audio_frames_equal"] == report["audio_frames_compared"] > 0
          and report["embeddings_frames_equal"] == report["embeddings_frames_compared"]
          and report["voice_cache_equal"] and report["voice_embeddings_max_abs_diff"] < 1e-5
          and bool(report["fork_refused_with"]))
    report["ok"] = bool(ok)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
