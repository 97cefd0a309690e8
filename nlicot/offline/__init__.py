"""The offline room: every model and dataset nlicot builds without a network, so tests, the demo and CI need no hub.

* :mod:`~nlicot.offline.v3_tokenizer` — the real Mistral-7B-v0.3 tokenizer (shipped by mistral-common) and how a
  v3 tokenizer folder is loaded;
* :mod:`~nlicot.offline.random_tiny` — ``tiny``: Mistral's architecture shrunk, random weights;
* :mod:`~nlicot.offline.tiny_nli` — ``tiny-nli``: the same shape pretrained on unlabelled task text (shipped);
* :mod:`~nlicot.offline.synthetic_task` — the learnable synthetic NLI task and the pretraining text;
* :mod:`~nlicot.offline.registry` — offline name → how to build it, read by :mod:`nlicot.hub`.

Imports point one way: registry → the models → tokenizer / synthetic task; nothing here imports :mod:`nlicot.hub`.
"""
