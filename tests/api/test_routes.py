import httpx
import openai


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    listing = await client.models.list()
    assert [m.id for m in listing.data] == ["tiny"]
    model = await client.models.retrieve("tiny")
    assert model.object == "model" and model.owned_by and model.created > 0


async def test_unknown_model_retrieve_is_404(client: openai.AsyncOpenAI) -> None:
    try:
        await client.models.retrieve("nope")
    except openai.NotFoundError as exc:
        assert exc.body["code"] == "model_not_found"
    else:
        raise AssertionError("expected 404")


async def test_health_and_openapi(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).json()["status"] == "ok"
    spec = (await http.get("/openapi.json")).json()
    assert "/v1/chat/completions" in spec["paths"]
    assert (await http.get("/docs")).status_code == 200
