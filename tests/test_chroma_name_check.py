"""What Chroma itself checks when a collection is reopened with an explicit function: only the name.

These pin the behaviour the README and docs/chroma.md warn about, and the checked paths they
recommend instead (``ChromaStore``, ``ChromaStore.from_collection``, or no explicit function).
"""

from __future__ import annotations

import chromadb
import pytest

import clip_embeddings as ce
from clip_embeddings.adapters.chroma import ChromaStore, ImageLoader


@pytest.fixture
def client_with_photos(tmp_path, tiny_model_path, sample_images):
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    photos = client.get_or_create_collection("photos", embedding_function=ce.ClipEF(str(tiny_model_path)),
                                             data_loader=ImageLoader())
    photos.add(ids=[p.stem for p in sample_images[:3]], uris=[str(p) for p in sample_images[:3]])
    return client


def test_chroma_accepts_other_weights_of_the_same_name_and_dimension(client_with_photos, other_tiny_model_path):
    other = ce.ClipEF(str(other_tiny_model_path))
    # Chroma compares function names only: the same name, other weights, no complaint...
    reopened = client_with_photos.get_or_create_collection("photos", embedding_function=other, data_loader=ImageLoader())
    assert reopened.count() == 3
    reopened = client_with_photos.get_collection("photos", embedding_function=other)
    # ...and the checked path refuses the very same collection object.
    with pytest.raises(ce.ModelMismatchError, match="was built with model"):
        ChromaStore.from_collection(reopened)


def test_the_checked_paths_refuse_other_weights(client_with_photos, tiny_model_path, other_tiny_model_path):
    with pytest.raises(ce.ModelMismatchError, match=f"ClipEF\\(model='{tiny_model_path}'\\)"):
        ChromaStore(client_with_photos, "photos", ce.ClipEF(str(other_tiny_model_path)))
    # With no explicit function, Chroma rebuilds the stored one: the right weights by construction.
    rebuilt = client_with_photos.get_collection("photos", data_loader=ImageLoader())
    assert ChromaStore.from_collection(rebuilt).ef.model_name == str(tiny_model_path)
    assert len(rebuilt.query(query_texts=["a cat"], n_results=2)["ids"][0]) == 2
