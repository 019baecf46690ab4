"""Stage one: run the frozen teacher once over images and their views, write a feature store."""
