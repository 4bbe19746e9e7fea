"""The embedded default corpus: deterministic two-speaker TTS dialogues with exact event labels.

``generate_corpus(out_dir, seed, params)`` renders ``synNNNN.wav`` (2-channel, 24 kHz),
``synNNNN.json`` (approximate word timings) and ``synNNNN.truth.json`` (exact pause, turn,
backchannel and interruption events); see :mod:`.generate` for the label rules. Needs the Debian
package ``flite`` (offline TTS).
"""

from duplexgym.corpora.synthetic.generate import (
    GENERATOR_VERSION,
    STAMP_NAME,
    TRUTH_SUFFIX,
    SyntheticParams,
    check_truth,
    generate_corpus,
)
from duplexgym.corpora.synthetic.tts import TTSUnavailableError

__all__ = [
    "GENERATOR_VERSION",
    "STAMP_NAME",
    "TRUTH_SUFFIX",
    "SyntheticParams",
    "TTSUnavailableError",
    "check_truth",
    "generate_corpus",
]
