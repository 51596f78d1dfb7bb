"""`python app.py --mcp`: the `chat` endpoint as a tool of gradio's MCP server, used here by the
`mcp` package's own client over streamable HTTP (and SSE) on a tiny random checkpoint. Without the
flag, no MCP route is served and the config does not advertise one."""

from __future__ import annotations

import asyncio
import base64
import sys

import httpx
import jsonschema
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ASSETS, ROOT, launched_app

FAST = {"max_new_tokens": 8, "max_tiles": 1}


@pytest.fixture(scope="module")
def mcp_app(tiny_checkpoint):
    with launched_app(tiny_checkpoint, mcp=True) as server:
        yield server


def data_url(path, mime: str) -> str:
    """A file as an MCP client hands it to gradio's MCP server: a base64 data URL."""
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def over_mcp(url: str, use, transport=streamable_http_client, endpoint: str = "gradio_api/mcp/"):
    """`await use(session)` in an initialised MCP session with the app at `url`."""
    async def run():
        async with transport(url + endpoint) as streams, ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            return await use(session)

    return asyncio.run(run())


def tools(url: str, **transport) -> dict:
    async def listed(session):
        return {tool.name: tool for tool in (await session.list_tools()).tools}

    return over_mcp(url, listed, **transport)


def call(url: str, arguments: dict):
    async def called(session):
        return await session.call_tool("chat", arguments)

    return over_mcp(url, called)


def answer(result) -> str:
    assert not result.isError, result.content
    assert [c.type for c in result.content] == ["text"]
    return result.content[0].text


def test_the_chat_endpoint_is_a_tool_with_a_valid_schema(mcp_app):
    listed = tools(mcp_app.url)
    # the public API endpoints, nothing of the page's own events (respond, add_message, retry...)
    assert set(listed) == {"chat", "export"}
    chat = listed["chat"]
    assert chat.description.startswith("Answer a question about images or a video")
    schema = chat.inputSchema
    # strict MCP clients refuse a tool whose inputSchema is no JSON Schema; the MCP SDK's own server
    # validates each call against it
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["message"]
    assert list(schema["properties"]) == ["message", "images", "video", "history", "system", "max_tiles",
                                          "num_frames", "temperature", "top_p", "max_new_tokens",
                                          "repetition_penalty", "top_k", "seed", "model", "image"]
    assert all(p.get("description") for p in schema["properties"].values())
    for file in ("image", "video"):  # files are URLs to MCP: gradio turns each into an upload
        assert schema["properties"][file]["type"] == "string"
    assert schema["properties"]["model"]["enum"] == [mcp_app.model]
    jsonschema.validate({"message": "Hi", "history": [{"role": "user", "content": "Hi"}],
                         "images": [data_url(ASSETS / "chart.png", "image/png")]}, schema)


def test_a_client_can_take_the_chat_tool_alone(mcp_app):
    assert set(tools(mcp_app.url, endpoint="gradio_api/mcp/?tools=chat")) == {"chat"}


def test_the_tools_are_also_served_over_sse(mcp_app):
    assert "chat" in tools(mcp_app.url, transport=sse_client, endpoint="gradio_api/mcp/sse")


def test_an_image_and_a_question_get_an_answer(mcp_app):
    asked = len(mcp_app.recorder.generations)
    text = answer(call(mcp_app.url, {"message": "What does the chart show?", **FAST,
                                     "image": data_url(ASSETS / "chart.png", "image/png")}))
    assert isinstance(text, str)  # random weights: any text, maybe none
    assert len(mcp_app.recorder.generations[asked].num_tiles) == 1  # the image reached the model


def test_a_list_of_images_does_not_pass_through_gradio_6_31s_mcp_server(mcp_app):
    """gradio's MCP server turns a URL into a file only where the schema has one file, not inside a
    list (gradio/mcp.py, convert_strings_to_filedata): the app gets the bare text and refuses it.
    Once this fails, a newer gradio passes `images` on: say so in docs/python-and-mcp.md."""
    result = call(mcp_app.url, {"message": "Hi", **FAST, "images": [data_url(ASSETS / "chart.png", "image/png")]})
    assert result.isError and result.content[0].text.startswith("Could not read the request. Check images")


def test_a_video_and_a_history(mcp_app):
    text = answer(call(mcp_app.url, {"message": "And what happens here?", **FAST, "num_frames": 2,
                                     "history": [{"role": "user", "content": "Hello"},
                                                 {"role": "assistant", "content": "Hi! How can I help?"}],
                                     "video": data_url(ASSETS / "ball.mp4", "video/mp4")}))
    assert isinstance(text, str)


def test_the_export_tool_writes_the_chat_to_a_file_it_links(mcp_app):
    async def exported(session):
        return await session.call_tool("export", {"history": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]})

    link = answer(over_mcp(mcp_app.url, exported))
    assert link.startswith(mcp_app.url + "gradio_api/file=") and link.endswith(".json")
    assert httpx.get(link, timeout=10).json()["messages"][0]["text"] == "Hi"


def test_a_bad_value_comes_back_as_a_tool_error_that_says_what_to_change(mcp_app):
    result = call(mcp_app.url, {"message": "Hi", **FAST, "max_tiles": 1000})
    assert result.isError
    assert "Max tiles per image must be a whole number from 1 to 24." in result.content[0].text


def test_readme_mcp_example_works_as_written(mcp_app, monkeypatch, capsys):
    readme = (ROOT / "docs" / "python-and-mcp.md").read_text(encoding="utf-8")
    code = readme.split("\n## MCP\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count("http://127.0.0.1:7860/") == 1
    monkeypatch.chdir(ROOT)
    exec(compile(code.replace("http://127.0.0.1:7860/", mcp_app.url), "python-and-mcp.md", "exec"), {})
    generation = mcp_app.recorder.generations[-1]
    assert capsys.readouterr().out == generation.text + "\n" and len(generation.num_tiles) == 1


def test_off_unless_asked_for(monkeypatch, tiny_checkpoint):
    sys.path.insert(0, str(ROOT))
    import app

    for name in ("EAGLE_MCP", "GRADIO_MCP_SERVER"):
        monkeypatch.delenv(name, raising=False)
    assert app.parse_args([]).mcp is False and app.parse_args(["--mcp"]).mcp is True
    # False, not gradio's default None, with which gradio reads GRADIO_MCP_SERVER itself
    assert app.build(app.parse_args(["--model", str(tiny_checkpoint)]))[2]["mcp_server"] is False
    for name in ("EAGLE_MCP", "GRADIO_MCP_SERVER"):
        monkeypatch.setenv(name, "true")
        assert app.parse_args([]).mcp is True
        monkeypatch.delenv(name)


def test_without_the_flag_no_mcp_route_is_served_nor_advertised(app_server):
    assert app_server.demo.mcp_server is False and app_server.demo.mcp_server_obj is None
    assert httpx.get(app_server.url + "config").json()["mcp_server"] is False  # the page's footer: "Use via API"
    for route in ("gradio_api/mcp/schema", "gradio_api/mcp/", "gradio_api/mcp/sse"):
        assert httpx.get(app_server.url + route, timeout=10).status_code == 404, route
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for route in ("gradio_api/mcp/", "gradio_api/mcp/messages/"):  # streamable HTTP's and SSE's
        assert httpx.post(app_server.url + route, json=listing, timeout=10).status_code == 404, route


def test_with_the_flag_the_config_advertises_it(mcp_app):
    assert httpx.get(mcp_app.url + "config").json()["mcp_server"] is True
    schema = httpx.get(mcp_app.url + "gradio_api/mcp/schema", timeout=10).json()
    assert {tool["name"]: tool["meta"]["endpoint_name"] for tool in schema} == {"chat": "chat", "export": "export"}
