"""``python -m course_utils.exercises build|check|execute``: the exercise generator's command.

The command keeps the name the course guide gives it; the generator itself is build machinery
and lives in :mod:`course_utils.build.exercises`.
"""

from __future__ import annotations

import sys

from .build.exercises import main

if __name__ == "__main__":
    sys.exit(main())
