"""Several people in one picture (the paper's multi-identity synthesis): where each person stands and the one
pipeline call that draws them all. A mixin of :class:`~instantid.InstantID` (it uses the model's face side,
settings, pipeline call and metadata), kept apart so the generator stays one screenful per concern."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from instantid.api.identity import Identity, everyone
from instantid.api.regions import in_column, nearest_face_regions, within_box
from instantid.api.results import GenerationResult, ImageInput, Progress
from instantid.api.settings import GenerationSettings, check_people, check_used
from instantid.api.style_images import StyleImages, load_style_images
from instantid.core.keypoints import draw_kps
from instantid.errors import InvalidInputError
from instantid.faces import Face


class GroupMixin:
    """``generate_group`` and what it needs beyond one person."""

    def group_poses(self, pose: ImageInput, count: int, name: str = "pose image") -> tuple[list[Face], tuple[int, int]]:
        """:func:`group_poses` with this model's face analyzer."""
        return self.faces.group_poses(pose, count, name)

    def generate_group(
        self, people: Sequence[Identity], settings: GenerationSettings | None = None, *,
        pose: ImageInput | None = None, pose_name: str = "pose image", progress: Progress | None = None,
        pose_faces: tuple[list[Face], tuple[int, int]] | None = None,
        style_images: StyleImages | ImageInput | Sequence[ImageInput] | None = None, **overrides: Any,
    ) -> GenerationResult:
        """Several people in one picture (the paper's multi-identity synthesis): person ``i`` takes the ``i``-th
        face from the left of the group photo ``pose`` (or, without one, column ``i`` of the picture in their own
        pose); each person's face tokens and IdentityNet act only in the region nearest their face. Takes
        :data:`~instantid.api.settings.MIN_PEOPLE` to :data:`~instantid.api.settings.MAX_PEOPLE` people, as every
        surface."""
        check_people(len(people))
        settings = self.call_settings(settings, **overrides)
        check_used(settings, "group", "a picture of several people")
        return self._generate_group(list(people), settings, pose=pose, pose_name=pose_name, progress=progress,
                                    pose_faces=pose_faces,
                                    style=load_style_images(style_images) if style_images is not None else None)

    def _generate_group(
        self, people: list[Identity], settings: GenerationSettings, *, pose: ImageInput | None, pose_name: str,
        progress: Progress | None, pose_faces: tuple[list[Face], tuple[int, int]] | None,
        style: StyleImages | None = None,
    ) -> GenerationResult:
        """:meth:`generate_group` for any number of people (one person gives what :meth:`generate` gives: the
        tests check the group machinery that way)."""
        from instantid.pipelines.call import Person

        if len({p.space for p in people}) != 1:
            raise InvalidInputError("every person must come from the same face model")
        if pose_faces is None and pose is not None:
            pose_faces = self.group_poses(pose, len(people), pose_name)
        if pose_faces is not None:
            faces, size = pose_faces
            width, height = self._size(settings, size)
            scale = np.array((width / size[0], height / size[1]))
            kps = [f.kps * scale for f in faces]
            boxes = [np.asarray(f.bbox).reshape(2, 2) * scale for f in faces]
        else:
            width, height = self._size(settings, (self.min_side * max(len(people), 2) // 2, self.min_side))
            placed = [in_column(p.pose_face, i, len(people), width, height) for i, p in enumerate(people)]
            kps, boxes = [k for k, _ in placed], [b for _, b in placed]
        regions = nearest_face_regions([k.mean(axis=0) for k in kps], (width, height))
        if settings.enhance_face_region:  # as for one person: identity acts on the face box, here within the region
            regions = [within_box(region, box) for region, box in zip(regions, boxes, strict=True)]
        canvas = Image.new("RGB", (width, height))
        persons = [Person(p.embedding, draw_kps(canvas, k), region) for p, k, region in zip(people, kps, regions,
                                                                                             strict=True)]
        images, seeds, used = self.run_pipeline(self.pipe, settings, progress, style_images=style,
                                                identities=persons)
        settings = settings.updated(seed=seeds[0])
        metadata = {
            **self.call_metadata(people[0], settings, used, task="group", style=style), **everyone(people),
            "width": width,
            "height": height, "people": [p.metadata() for p in people],
            "pose_from": pose_name if pose_faces is not None else "columns",
        }
        return GenerationResult(images=images, seeds=seeds, settings=settings, metadata=metadata)
