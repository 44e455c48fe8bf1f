"""Training: config files, the trainer loop, distributed setup, optimisers, logs, resume state.

Entry point: ``python -m megaportraits_export train --config FILE`` (see ``train.py``).
"""
