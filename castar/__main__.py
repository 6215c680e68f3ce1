"""``python -m castar``: the same command line as the ``castar`` console script.

Owns nothing but the entry point; everything lives in castar._cli.
"""

from __future__ import annotations

from castar._cli import main

raise SystemExit(main())
