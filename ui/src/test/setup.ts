// happy-dom has no 2D canvas; uPlot only needs the calls to exist, so give it a no-op context.
const noop = () => {};
const ctx = new Proxy({} as Record<string, unknown>, {
  get: (t, k) => (k in t ? t[k as string] : k === "measureText" ? () => ({ width: 10 }) : noop),
  set: (t, k, v) => ((t[k as string] = v), true),
});
HTMLCanvasElement.prototype.getContext = (() => ctx) as unknown as HTMLCanvasElement["getContext"];
globalThis.ResizeObserver ??= class { observe() {} unobserve() {} disconnect() {} } as unknown as typeof ResizeObserver;
(globalThis as Record<string, unknown>).Path2D ??= class {
  moveTo() {} lineTo() {} rect() {} arc() {} closePath() {} bezierCurveTo() {} addPath() {}
};
