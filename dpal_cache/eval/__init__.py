"""Quick frozen-backbone probes of a distilled student (and its teacher): reid, attributes, parsing.

metrics.py holds the protocols as pure functions (docs/evaluation.md); features.py turns models
into features and fits linear read-outs; reid.py, attributes.py and parsing.py are the probes;
compare.py puts student and teacher side by side. The CLI is ``dpal-cache eval``.
"""
