"""Solutions to the exercises of chapters/ch04_exercises.md, ch12_exercises.md and ch13_exercises.md.

One script per exercise that needs more than a flag of the chapter script. Each one composes nanoft's library (never
the chapter script), runs the experiment the exercise asks for, and prints a small table. Every script takes --smoke
(tiny sizes: it checks that the code runs, in seconds, not what the answer is) and has flags of its own, listed by
--help:

    python -m chapters.solutions.ch13_pooling --data-dir ../shared/data
    python -m chapters.solutions.ch13_pooling --data-dir ../shared/data --smoke

The chapter-4 solutions share their flags and set-up through ch04_common.py, the chapter-13 ones through
ch13_common.py.
"""
