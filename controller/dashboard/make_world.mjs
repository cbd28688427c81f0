// Writes world.svg, the dashboard map's land outline: Natural Earth's
// 1:110m land (public domain), from the npm package world-atlas@2 (its
// TopoJSON), projected equirectangular onto a 360 x 180 viewBox (x =
// longitude + 180, y = 90 - latitude) at half a degree. Run by hand:
//   npm install world-atlas@2 topojson-client@3 && node make_world.mjs
// The page draws each PoP at the same coordinates over it.
import fs from 'fs';
import * as topojson from 'topojson-client';

const land = JSON.parse(fs.readFileSync('node_modules/world-atlas/land-110m.json', 'utf8'));
const geo = topojson.feature(land, land.objects.land);
const half = (v) => Math.round(v * 2) / 2;
let d = '';
for (const f of geo.features) {
  const polygons = f.geometry.type === 'Polygon' ? [f.geometry.coordinates] : f.geometry.coordinates;
  for (const polygon of polygons) {
    for (const ring of polygon) {
      // A ring across the antimeridian (Eurasia at Chukotka, Fiji) is made
      // continuous past the map's edge and drawn three times, shifted by
      // -360, 0 and +360: the viewBox clips each copy, so every part shows
      // where it is, with no line across the whole map.
      const xs = [], ys = [];
      let crosses = false;
      for (const [lon, lat] of ring) {
        let x = lon + 180;
        const prev = xs.length ? xs[xs.length - 1] : null;
        while (prev !== null && x - prev > 180) { x -= 360; crosses = true; }
        while (prev !== null && prev - x > 180) { x += 360; crosses = true; }
        xs.push(x);
        ys.push(90 - lat);
      }
      for (const shift of crosses ? [-360, 0, 360] : [0]) {
        const points = [];
        for (let i = 0; i < xs.length; i++) {
          const p = `${half(xs[i] + shift)},${half(ys[i])}`;
          if (points[points.length - 1] !== p) points.push(p);
        }
        if (points.length >= 3) d += `M${points.join('L')}Z`;
      }
    }
  }
}
fs.writeFileSync('world.svg',
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 360 180">' +
  `<path fill="#cfd8c4" stroke="#a9b59c" stroke-width=".3" d="${d}"/></svg>\n`);
