/**
 * WebKitGTK reports the POSIX locale as `navigator.language` ("C" when LANG is unset, as on a
 * bare CI machine), which `Intl` rejects with a RangeError — and uPlot builds an
 * `Intl.NumberFormat(navigator.language)` when its module loads, which left the window blank.
 * Fall back to the default locale for tags Intl does not accept. Imported before anything else.
 */
const Native = Intl.NumberFormat;
function supported(locales: unknown): unknown {
  try {
    Native.supportedLocalesOf(locales as string);
    return locales;
  } catch {
    return undefined;
  }
}
const Guarded = function (this: unknown, locales?: unknown, options?: Intl.NumberFormatOptions) {
  return new Native(supported(locales) as string | undefined, options);
} as unknown as typeof Intl.NumberFormat;
Object.assign(Guarded, { supportedLocalesOf: Native.supportedLocalesOf });
Object.defineProperty(Guarded, "prototype", { value: Native.prototype });
Intl.NumberFormat = Guarded;
const lang = navigator.language;
if (lang && supported(lang) === undefined) document.documentElement.lang = "en";
