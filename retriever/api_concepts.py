"""The concept methods of retriever.api.Collection (`retriever concept`): a mixin, so that the
façade stays one class and each module stays small."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


class ConceptMethods:
    """Mixed into Collection: uses its `idx` and `searcher()`."""

    def add_concept(self, name: str, images: Sequence[str | Path] = (), *, negatives: Sequence[str | Path] = (),
                    ids: Sequence[int] = (), not_ids: Sequence[int] = ()) -> dict[str, Any]:
        """Teach the concept `name` (created when new) from photos that show it (`images`: files
        inside the collection or not, `photo.jpg@x0,y0,x1,y1` a part; `ids`: catalog ids) and
        that do not (`negatives`, `not_ids`), and refit it. Then `search("concept:NAME")` ranks
        by it and `search(..., concepts=["NAME"])` keeps the photos it says yes to. An example
        that cannot be read raises ConceptError and nothing is stored."""
        from retriever.concepts import add_examples

        searcher = self.searcher()
        return add_examples(self.idx, name, images=[str(Path(p).expanduser()) for p in images],
                            negatives=[str(Path(p).expanduser()) for p in negatives], ids=ids, not_ids=not_ids,
                            image_vector=searcher.image_vector, vectors=searcher.vectors)

    def mark(self, name: str, *, yes: Sequence[int] = (), no: Sequence[int] = ()) -> dict[str, Any]:
        """Relevance feedback: catalog photos marked "yes, this" / "not this" for concept `name`
        (created by a first yes); it is refitted at once (milliseconds, nothing re-encoded)."""
        from retriever.concepts import mark

        return mark(self.idx, name, yes=yes, no=no, vectors=self.searcher().vectors)

    def concepts(self) -> list[dict[str, Any]]:
        """The concepts of the index: name, model, examples, fit."""
        from retriever.concepts import list_concepts

        return list_concepts(self.idx)

    def concept(self, name: str) -> dict[str, Any]:
        from retriever.concepts import show  # one concept with its examples

        return show(self.idx, name)

    def remove_concept(self, name: str, *, ids: Sequence[int] = (), examples: Sequence[int] = ()) -> dict[str, Any] | None:
        """Remove the concept, or only some of its examples (by photo id or example number; then
        it is refitted and returned)."""
        from retriever.concepts import forget, remove

        if ids or examples:
            return forget(self.idx, name, image_ids=ids, example_ids=examples, vectors=self.searcher().vectors)
        remove(self.idx, name)
        return None

    def export_concept(self, name: str) -> dict[str, Any]:
        """The concept as JSON-able data (model, examples' vectors), for import_concept elsewhere."""
        from retriever.concepts import export_concept

        return export_concept(self.idx, name)

    def import_concept(self, data: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """A concept exported from an index of the same model, added here (refused for another model)."""
        from retriever.concepts import import_concept

        return import_concept(self.idx, data, name, vectors=self.searcher().vectors)

