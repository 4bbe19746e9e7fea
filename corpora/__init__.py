"""duplexgym.corpora: conversation audio in -> per-axis segments + manifest out.

Stages: a source (:mod:`.sources`) yields dialogues; :mod:`.vad` finds each speaker's speech;
:mod:`.events` detects pauses, turn shifts, backchannels and interruptions; :mod:`.segments` cuts
per-axis segments; :mod:`.build` orchestrates, writes ``manifest.jsonl`` (:mod:`.manifest`) and the
segment audio, and resumes an interrupted build.
"""
