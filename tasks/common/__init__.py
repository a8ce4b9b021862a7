"""Code every stage shares: atomic writes, the artefact tables' schemas, audio I/O, MLflow
stage runs, reports, the content-addressed score cache, quality levels, text conditioning
and guided generation with a trained backbone. Imports only tasks.params, tasks.backends,
tasks.synthesis and models/, never a stage package.
"""
