"""Every counter-based random stream of dpal-cache, in one table: a draw is a pure function of (seed, stream,
index, ...), so each stream id must mean one thing forever (a stored store or a resumed run depends on it).

| id | stream | drawn in |
|---|---|---|
| 1 | cached global views | views/params.py |
| 2 | student local crops (per epoch) | views/local.py |
| 3 | crowd recipes | views/crowd.py |
| 4 | crowd recipes' own crops | views/crowd.py |
| 5 | which cached view trains in an epoch | train/sampler.py |
| 6 | which cached crowd image trains in an epoch | train/sampler.py |
| 7 | the order of an epoch's samples | train/sampler.py |

Add new streams at the end; never renumber.
"""

STREAM_GLOBAL = 1
STREAM_LOCAL = 2
STREAM_CROWD = 3
STREAM_CROWD_LOCAL = 4
STREAM_EPOCH_VIEW = 5
STREAM_EPOCH_CROWD = 6
STREAM_EPOCH_ORDER = 7
