"""The training and validation corpus: symbolic music rendered into audio versions of the same work.

works.py lists works and their MIDI sources, procedural.py invents new works,
arrange.py turns a work into a version (key, tempo, parts, programs, structure),
render.py synthesises it and applies a recording chain, build.py runs it all
in parallel into a feature cache (the front end's CQT, float16).
"""
