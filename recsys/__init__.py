"""recsys: graph contrastive recommenders from interaction logs."""

import os

# Before torch loads OpenMP: idle workers sleep instead of spinning, so a busy machine does not
# turn every barrier into a wait for a descheduled thread (measured in recsys/threads.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
