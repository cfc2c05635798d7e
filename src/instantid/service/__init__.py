"""The generation service behind ``instantid serve`` and ``instantid worker``: durable jobs, workers, limits.

* :mod:`~instantid.service.jobs`: job records, the job's own folder, the SQLite store (default);
* :mod:`~instantid.service.redis_store`: the same store in Redis (``--queue redis://...``);
* :mod:`~instantid.service.settings`: :class:`ServerSettings`, the server's options (``serve``'s flags);
* :mod:`~instantid.apps.tasks`: what a job asks for (generate, swap, group, detail) and its photos analysed,
  once, into the job a worker runs; :mod:`~instantid.service.stored`: that analysed job kept in its job folder;
* :mod:`~instantid.apps.detail`: face detail on an existing picture as a job, and its options;
* :mod:`~instantid.service.runner`: running one job; the in-process worker;
* :mod:`~instantid.service.rq_worker`: many workers through RQ, recovery of a killed worker's job;
* :mod:`~instantid.service.core`: :class:`JobService`, what the HTTP API and the web UI call;
* :mod:`~instantid.service.requests`: the HTTP request bodies, one model per task that parses multipart and JSON
  alike (:mod:`~instantid.service.openapi` documents both from it); :mod:`~instantid.service.responses`: answers;
* :mod:`~instantid.service.server`: ``create_app``, which includes the routers of :mod:`~instantid.service.routes`;
* :mod:`~instantid.service.auth`, :mod:`~instantid.service.metrics`: API keys and limits; Prometheus.
"""
