"""The library behind run_mlm.py and scripts/: continued masked-LM pretraining of BERT-family encoders.

One module per job; every module logs under the ``mlm_pretraining`` parent logger. The entry points sit at the
repository's top level (run_mlm.py, arguments.py, collators.py, scripts/).
"""
