"""What the one-page recipe forms (Align, Personalize) share: render the recipe the widgets describe
through the backend, show its problems or its estimate, and queue it as a job.

A form sets ``recipe`` (the default recipe as data), ``estimate`` and ``recipe_text`` (widgets) and
implements ``collect`` (the recipe as the widgets say) and ``_show_estimate``; the backend renders,
validates and estimates, so the Studio never parses a recipe's rules itself.
"""

from __future__ import annotations

from typing import Any

from ..widgets import show_error


class RecipeForm:
    recipe: dict[str, Any] | None
    text: str

    def collect(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def _show_estimate(self, est: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def review(self, then=None) -> None:
        """Render and check the recipe, then estimate it; ``then(text)`` runs on a valid recipe."""
        if self.recipe is None:
            return

        def rendered(text: str) -> None:
            self.text = text
            self.recipe_text.setPlainText(text)  # type: ignore[attr-defined]
            self.link.call("estimate_recipe", text, done=self._show_estimate,  # type: ignore[attr-defined]
                           failed=lambda e, d: self.estimate.setText(f"no estimate: {e}"))  # type: ignore[attr-defined]
            if then:
                then(text)

        def failed(exc, details) -> None:
            detail = getattr(exc, "detail", None)
            issues = detail.get("issues", []) if isinstance(detail, dict) else []
            self.estimate.setText("the recipe has problems: " + ("; ".join(f"{i['path']}: {i['reason']}" for i in issues) or str(exc)))  # type: ignore[attr-defined]
            if then:
                show_error(self, "The recipe has problems.", self.estimate.text(), "Correct the fields named above.", details)  # type: ignore[attr-defined,arg-type]

        self.link.call("render_recipe", self.collect(), done=rendered, failed=failed)  # type: ignore[attr-defined]

    def submit(self, name: str) -> None:
        """Review, then queue the recipe as a job named ``name``; ``job_started`` carries the new job."""
        def go(text: str) -> None:
            self.link.call("create_job", text, name, done=self.job_started.emit,  # type: ignore[attr-defined]
                           failed=lambda e, d: show_error(self, "The run did not start.", str(e), details=d))  # type: ignore[arg-type]

        self.review(then=go)
