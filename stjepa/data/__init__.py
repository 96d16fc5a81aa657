"""Video data: synthetic moving-shapes clips (``stjepa.data.synthetic``)."""
