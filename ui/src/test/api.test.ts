import { afterEach, describe, expect, it } from "vitest";
import { clearMocks, mockIPC } from "@tauri-apps/api/mocks";
import { api } from "../lib/api";
import { hardware } from "./fixtures";

afterEach(() => clearMocks());

describe("api over mocked IPC", () => {
  it("calls the shell's command names with camelCase arguments", async () => {
    const seen: [string, unknown][] = [];
    mockIPC((cmd, args) => {
      seen.push([cmd, args]);
      if (cmd === "hardware_scan") return hardware;
      if (cmd === "data_inspect") return { rows: 1 };
    });
    expect((await api.hardwareScan()).hardware.cpu.model).toBe("Test CPU");
    await api.dataInspect("/d.jsonl", 128);
    expect(seen[1]).toEqual(["data_inspect", { path: "/d.jsonl", maxLen: 128, skipBadRows: false }]);
  });

  it("passes {code, message, details} errors through", async () => {
    mockIPC(() => { throw { code: "BadDataset", message: "d.jsonl:3: messages: missing", details: null }; });
    await expect(api.dataInspect("/d.jsonl", 128)).rejects.toMatchObject({ code: "BadDataset" });
  });

  it("wraps anything else as Internal", async () => {
    mockIPC(() => { throw "boom"; });
    await expect(api.runsList()).rejects.toMatchObject({ code: "Internal", message: "boom" });
  });
});
