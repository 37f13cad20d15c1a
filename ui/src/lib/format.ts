/** Display helpers shared by the steps. */

export function bytes(b: number | null | undefined): string {
  if (b == null || !Number.isFinite(b)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Math.abs(b);
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const s = u === 0 ? `${v}` : v.toFixed(v < 10 ? 2 : 1);
  return `${b < 0 ? "−" : ""}${s} ${units[u]}`;
}

export function duration(s: number | null | undefined): string {
  if (s == null || !Number.isFinite(s)) return "—";
  if (s < 1) return "< 1 s";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function count(n: number | null | undefined): string {
  if (n == null) return "—";
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} K`;
  return `${n}`;
}

export function pct(x: number | null | undefined): string {
  return x == null ? "—" : `${(100 * x).toFixed(x > 0 && x < 0.01 ? 1 : 0)} %`;
}

/** Local date and time; ISO when the platform's locale is one Intl rejects. */
export function dateTime(unixSeconds: number): string {
  const d = new Date(unixSeconds * 1000);
  try {
    return d.toLocaleString();
  } catch {
    return d.toISOString().slice(0, 16).replace("T", " ");
  }
}
