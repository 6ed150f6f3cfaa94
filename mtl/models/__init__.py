"""Models. IPT is the one architecture so far: `mtl.models.ipt`."""
