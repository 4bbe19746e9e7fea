"""The numbers and names every layer of duplexgym shares, defined once.

A leaf module: it imports nothing, so ``corpora``, ``envs``, ``rewards``, ``agents`` and the CLI
all import it at the top (``from duplexgym.constants import FRAME_S``).
"""

#: The four interactivity axes, in the order used everywhere (CLI, manifests, tables).
AXES = ("pause", "turn", "backchannel", "interruption")

# --- audio and frames ----------------------------------------------------------------------------
#: Sample rate of every track inside duplexgym (Moshi / Mimi rate), in Hz.
SAMPLE_RATE = 24_000
#: Samples per 80 ms frame at :data:`SAMPLE_RATE`.
FRAME_SAMPLES = 1_920
#: Duration of one frame, in seconds (0.08).
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
#: Frames per second (12.5).
FRAME_RATE_HZ = SAMPLE_RATE / FRAME_SAMPLES

# --- Mimi ---------------------------------------------------------------------------------------
#: Codebooks per frame, as Moshi reads and writes them.
MIMI_CODEBOOKS = 8
#: Entries per codebook: codes lie in ``[0, MIMI_CARDINALITY)``.
MIMI_CARDINALITY = 2_048

# --- Moshi's text stream and actions --------------------------------------------------------------
#: Moshi's text vocabulary size (``text_card``).
TEXT_CARD = 32_000
#: Moshi's text ids that are not words: end of padding, BOS, EOS, padding.
TEXT_END_PAD, TEXT_BOS, TEXT_EOS, TEXT_PAD = 0, 1, 2, 3
#: The text ids of a silent frame (end of padding and padding).
TEXT_PAD_IDS = (TEXT_END_PAD, TEXT_PAD)
#: Token streams per frame: 1 text + the agent's :data:`MIMI_CODEBOOKS` audio codebooks
#: (a ``tokens`` action is one token per stream).
N_STREAMS = 1 + MIMI_CODEBOOKS
#: Index of the text stream in an action; 1..8 are the audio codebooks.
TEXT_STREAM = 0

# --- models and sampling ---------------------------------------------------------------------------
#: The name that selects the tiny random Moshi / Mimi (``--codec tiny``, ``model: tiny``).
TINY_MODEL = "tiny"
#: Moshi's streaming sampler: temperature and top-k of the audio and text streams.
SAMPLER_DEFAULTS = {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25}
#: Which token streams a policy update covers.
UPDATE_STREAMS = ("text", "audio", "all")
