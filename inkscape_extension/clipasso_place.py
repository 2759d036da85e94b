#!/usr/bin/env python3
"""Extensions > CLIPasso > Place a job's result: the strokes of an earlier Line sketch job (one that ran past
its Timeout and went on on the backend) placed over the selected image, as Line sketch places them.

A menu item of its own: as a field of Line sketch, a job id once typed stayed in Inkscape's preferences,
and every later Line sketch placed that old result over whatever image was selected.
"""

from __future__ import annotations

from clipasso_client import check_job_id
from clipasso_images import ImageError
from clipasso_sketch import Sketch


class Place(Sketch):
    """Line sketch's placing, for a job that exists already."""

    def add_arguments(self, pars):
        self.add_placing_arguments(pars)
        pars.add_argument("--job_id", default="")

    def wanted_job(self) -> str:
        job_id = self.options.job_id.strip()
        if not job_id:
            raise ImageError("Type the id of the job to place on the Job page: the message of the Line sketch "
                             "that ran past its Timeout names it")
        return check_job_id(job_id)


if __name__ == "__main__":
    Place().run()
