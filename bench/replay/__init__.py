"""Recorded learning curves of the demo study (``record.py`` → ``table.csv``) and the trainable that replays them
(``trainable.py``), so searches run through the real Tuner in seconds (``bench/search_efficiency.py``)."""
