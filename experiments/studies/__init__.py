"""Study configs for launch/study.py (see mtl/study/spec.py for the fields)."""
