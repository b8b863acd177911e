"""Pure machine-learning package for Tandem: frames, pipelines, artefacts, fast inference, profiles.

Nothing here imports Flask, the database or other ``service`` modules, so workers and the API
can both call it and it can be tested in isolation.

Import the submodule you need (``service.ml.fast``, ``service.ml.profile`` …): this package
re-exports nothing, so that importing the profile or the compiled predictor in a web process
does not load the training stack (scikit-learn, skops, pandas) that ``service.ml.pipeline``
and ``service.ml.artifacts`` bring (bench/README.md, "Memory").
"""
