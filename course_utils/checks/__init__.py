"""The checks that the exercise notebooks call after each task, one module per chapter.

Each check really verifies the learner's object against a reference measured at run time (a
forward pass through the real layers, :func:`course_utils.train.evaluate`, scikit-learn). On
success it prints one line ``✅ Exercise N.k: <what was verified>``; on failure it prints
``❌ Exercise N.k: <what is wrong>`` and raises :class:`AssertionError` naming the failing case
and one hint. A ``NotImplementedError`` from an unfinished blank is passed through unchanged.
Where a task asks the learner to write something, the library functions that would do it are
switched off while the check runs (:func:`course_utils.checks._common.refuse`).

Import from the chapter's module: ``from course_utils.checks.ch04 import check_inverted_dropout``.
"""
