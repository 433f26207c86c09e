"""Named runs of the trainer (``--config debug``, ``--config default``): TOML files shipped as
package data; see ``trainer/config.py`` for every key."""
