"""The HTTP routes, one :class:`fastapi.APIRouter` per concern, included by :func:`instantid.service.server.create_app`:

* :mod:`~instantid.service.routes.info`: ``/health``, ``/ready``, ``/metrics``, ``/v1/models``;
* :mod:`~instantid.service.routes.submit`: ``POST /v1/generate|swap|group|detail`` (queue a job, ``?wait=true``);
* :mod:`~instantid.service.routes.jobs`: ``/v1/jobs`` (list, status, cancel/delete, images);
* :mod:`~instantid.service.routes.deps`: who is calling (API keys) and the job service, for every route.
"""
