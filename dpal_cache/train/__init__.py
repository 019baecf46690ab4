"""Stage two: train a lightweight student and its pattern decoder against cached teacher outputs."""
