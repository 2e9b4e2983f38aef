"""Integrations with training frameworks, each an optional extra imported only on use:

    from surgery.integrations.lightning import ToSTCallback    # pip install "tost-surgery[lightning]"
"""
