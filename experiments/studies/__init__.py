"""Study configs for launch/study.py (see mtl/study.py for the fields)."""
