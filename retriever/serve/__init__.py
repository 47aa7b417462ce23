"""`retriever serve`: an HTTP API and a web page over one index, with the model kept warm.

    service.py  what the API does, over a warm retriever.api.Collection: limits, similar by id or
                upload, ask, originals and thumbnails opened safely (LRU of thumbnails)
    app.py      the FastAPI app: JSON API, token check, JSON errors, the page under static/
    concepts.py the /api/concepts routes: relevance feedback marks, examples, export/import
    server.py   uvicorn, and the discovery file (serve.json) written while the server is up
    client.py   standard library only: find a running server, query it (used by the CLI)

fastapi and uvicorn come with the `serve` extra (pip install 'retriever[serve]'); nothing here
imports them at module level except app.py (with concepts.py, its routes) and server.py, which
only `retriever serve` loads."""
