"""Fetching the published weights from the Hugging Face Hub: what to fetch (:mod:`~instantid.hub.catalog`) and
how, verified and resumable, into the standard cache (:mod:`~instantid.hub.fetch`)."""
