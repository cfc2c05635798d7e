"""Applications built on the API: face swap, face detail, pose layouts, batch jobs."""
