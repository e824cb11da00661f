"""The catalogue as DCAT-AP 3 (rdflib): the whole catalogue or one dataset, Turtle or JSON-LD.

Only published and deprecated datasets the caller may see are exported (drafts, reviews and
retired datasets are not part of a publication catalogue). Each dataset carries its publisher
(the department, a foaf:Organization), a vCard contact point, licence, EU data themes,
frequency, temporal and spatial coverage, and one distribution: the records API as access
URL, the CSV export as download URL, conforming to a schema resource that lists the columns
(CSV on the Web vocabulary, plus each column's sensitivity class). Every node referenced
through a DCAT-AP property is typed and labelled as the DCAT-AP 3.0.1 shapes require.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, SKOS, XSD

from catalog.models import Dataset, DatasetStatus, Field, FieldType, Licence, Sensitivity, Theme, UpdateFrequency
from catalog.selectors import dataset_quality
from departments.models import Department

VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
CSVW = Namespace("http://www.w3.org/ns/csvw#")
ADMS = Namespace("http://www.w3.org/ns/adms#")
DQV = Namespace("http://www.w3.org/ns/dqv#")
PROV = Namespace("http://www.w3.org/ns/prov#")
EU = "http://publications.europa.eu/resource/authority/"
# A DCAT 3 term that rdflib's closed DCAT namespace does not list yet.
DCAT_VERSION = URIRef(f"{DCAT}version")
THEME_SCHEME = URIRef(f"{EU}data-theme")
FREQUENCY_SCHEME = URIRef(f"{EU}frequency")
ACCESS_RIGHTS = {"public": URIRef(f"{EU}access-right/PUBLIC"), "restricted": URIRef(f"{EU}access-right/RESTRICTED")}
CSV_FORMAT = URIRef(f"{EU}file-type/CSV")
CSV_MEDIA_TYPE = URIRef("http://www.iana.org/assignments/media-types/text/csv")
STATUS: dict[str, URIRef] = {DatasetStatus.PUBLISHED: URIRef("http://purl.org/adms/status/Completed"),
          DatasetStatus.DEPRECATED: URIRef("http://purl.org/adms/status/Deprecated")}

LICENCE_URIS: dict[str, str] = {
    Licence.CC0: f"{EU}licence/CC0",
    Licence.CC_BY: f"{EU}licence/CC_BY_4_0",
    Licence.CC_BY_SA: f"{EU}licence/CC_BY_SA_4_0",
    Licence.ODBL: "https://opendatacommons.org/licenses/odbl/1-0/",
}
XSD_TYPES = {
    FieldType.TEXT: XSD.string, FieldType.INTEGER: XSD.integer, FieldType.DECIMAL: XSD.decimal,
    FieldType.BOOLEAN: XSD.boolean, FieldType.DATE: XSD.date, FieldType.TIMESTAMP: XSD.dateTime,
    FieldType.GEOPOINT: XSD.string, FieldType.JSON: RDF.JSON,
}
CONTEXT = {
    "dcat": str(DCAT), "dct": str(DCTERMS), "foaf": str(FOAF), "vcard": str(VCARD), "skos": str(SKOS),
    "csvw": str(CSVW), "adms": str(ADMS), "xsd": str(XSD), "dqv": str(DQV), "prov": str(PROV),
    "exchange": f"{settings.SITE_URL}/ns#",
}
FORMATS = {"ttl": ("turtle", "text/turtle; charset=utf-8"), "jsonld": ("json-ld", "application/ld+json")}


def _site() -> str:
    return settings.SITE_URL


def catalog_uri() -> URIRef:
    return URIRef(f"{_site()}/catalog")


def dataset_uri(dataset: Dataset) -> URIRef:
    return URIRef(f"{_site()}/datasets/{dataset.pk}")


def department_uri(department: Department) -> URIRef:
    return URIRef(f"{_site()}/departments/{department.slug}/")


def _en(text: str) -> Literal:
    return Literal(text, lang="en")


def _when(value: datetime) -> Literal:
    return Literal(value.replace(microsecond=0).isoformat(), datatype=XSD.dateTime)


class CatalogGraph:
    """Builds one graph; shared nodes (departments, themes, licences) are added once."""

    def __init__(self) -> None:
        self.g = Graph()
        for prefix, ns in CONTEXT.items():
            self.g.bind(prefix, Namespace(ns))
        self._done: set[URIRef] = set()
        self.ns = Namespace(CONTEXT["exchange"])

    def _once(self, uri: URIRef) -> bool:
        if uri in self._done:
            return False
        self._done.add(uri)
        return True

    def city(self) -> URIRef:
        uri = URIRef(f"{_site()}/#city")
        if self._once(uri):
            self.g.add((uri, RDF.type, FOAF.Agent))
            self.g.add((uri, RDF.type, FOAF.Organization))
            self.g.add((uri, FOAF.name, _en("City data exchange")))
            self.g.add((uri, FOAF.homepage, URIRef(f"{_site()}/")))
        return uri

    def department(self, department: Department) -> URIRef:
        uri = department_uri(department)
        if self._once(uri):
            self.g.add((uri, RDF.type, FOAF.Agent))
            self.g.add((uri, RDF.type, FOAF.Organization))
            self.g.add((uri, FOAF.name, _en(department.name)))
            if department.contact_email:
                self.g.add((uri, FOAF.mbox, URIRef(f"mailto:{department.contact_email}")))
            if department.homepage:
                self.g.add((uri, FOAF.homepage, URIRef(department.homepage)))
        return uri

    def _concept(self, uri: URIRef, label: str, scheme: URIRef, scheme_title: str,
                 extra_type: URIRef | None = None) -> URIRef:
        if self._once(uri):
            self.g.add((uri, RDF.type, SKOS.Concept))
            if extra_type is not None:
                self.g.add((uri, RDF.type, extra_type))
            self.g.add((uri, SKOS.prefLabel, _en(label)))
            self.g.add((uri, SKOS.inScheme, scheme))
        if self._once(scheme):
            self.g.add((scheme, RDF.type, SKOS.ConceptScheme))
            self.g.add((scheme, DCTERMS.title, _en(scheme_title)))
        return uri

    def theme(self, code: str) -> URIRef:
        label = Theme(code).label if code in Theme.values else code
        return self._concept(URIRef(f"{EU}data-theme/{code}"), label, THEME_SCHEME, "Data theme")

    def frequency(self, code: str) -> URIRef:
        return self._concept(URIRef(f"{EU}frequency/{code}"), UpdateFrequency(code).label, FREQUENCY_SCHEME,
                             "Frequency", DCTERMS.Frequency)

    def licence(self, code: str) -> URIRef:
        uri = URIRef(LICENCE_URIS.get(code, f"{_site()}/licences/{code}"))
        if self._once(uri):
            self.g.add((uri, RDF.type, DCTERMS.LicenseDocument))
            self.g.add((uri, DCTERMS.title, _en(Licence(code).label)))
        return uri

    def rights(self, kind: str) -> URIRef:
        uri = ACCESS_RIGHTS[kind]
        if self._once(uri):
            self.g.add((uri, RDF.type, DCTERMS.RightsStatement))
            self.g.add((uri, SKOS.prefLabel, _en(kind.title())))
        return uri

    def status(self, status: str) -> URIRef:
        uri = STATUS[status]
        return self._concept(uri, "Deprecated" if status == DatasetStatus.DEPRECATED else "Completed",
                             URIRef("http://purl.org/adms/status/1.0"), "ADMS status")

    def catalog(self, datasets: Iterable[Dataset]) -> URIRef:
        uri = catalog_uri()
        g = self.g
        g.add((uri, RDF.type, DCAT.Catalog))
        g.add((uri, DCTERMS.title, _en("City data exchange catalogue")))
        g.add((uri, DCTERMS.description, _en(
            "Datasets the city's departments publish for each other, with their field schemas.")))
        g.add((uri, DCTERMS.publisher, self.city()))
        g.add((uri, FOAF.homepage, URIRef(f"{_site()}/")))
        for dataset in datasets:
            g.add((uri, DCAT.dataset, self.dataset(dataset)))
        return uri

    def dataset(self, dataset: Dataset) -> URIRef:
        g = self.g
        uri = dataset_uri(dataset)
        g.add((uri, RDF.type, DCAT.Dataset))
        g.add((uri, DCTERMS.title, _en(dataset.title)))
        g.add((uri, DCTERMS.description, _en(dataset.description)))
        g.add((uri, DCTERMS.identifier, Literal(str(uri))))
        g.add((uri, ADMS.identifier, self._identifier(dataset)))
        g.add((uri, DCTERMS.publisher, self.department(dataset.department)))
        g.add((uri, DCAT.landingPage, self._page(f"{_site()}/api/v1/datasets/{dataset.pk}/", dataset.title)))
        for keyword in dataset.keywords:
            g.add((uri, DCAT.keyword, _en(keyword)))
        for code in dataset.themes:
            g.add((uri, DCAT.theme, self.theme(code)))
        g.add((uri, DCTERMS.accrualPeriodicity, self.frequency(dataset.update_frequency)))
        g.add((uri, ADMS.status, self.status(dataset.status)))
        if dataset.published_at:
            g.add((uri, DCTERMS.issued, _when(dataset.published_at)))
        g.add((uri, DCTERMS.modified, _when(dataset.modified_at)))
        if dataset.current_schema is not None:
            g.add((uri, DCAT_VERSION, Literal(str(dataset.current_schema.number))))
        if dataset.temporal_start or dataset.temporal_end:
            period = BNode()
            g.add((period, RDF.type, DCTERMS.PeriodOfTime))
            if dataset.temporal_start:
                g.add((period, DCAT.startDate, Literal(dataset.temporal_start, datatype=XSD.date)))
            if dataset.temporal_end:
                g.add((period, DCAT.endDate, Literal(dataset.temporal_end, datatype=XSD.date)))
            g.add((uri, DCTERMS.temporal, period))
        if dataset.spatial:
            place = BNode()
            g.add((place, RDF.type, DCTERMS.Location))
            g.add((place, SKOS.prefLabel, _en(dataset.spatial)))
            g.add((uri, DCTERMS.spatial, place))
        if dataset.contact is not None:
            g.add((uri, DCAT.contactPoint, self._contact(dataset)))
        fields = list(dataset.current_schema.fields.all()) if dataset.current_schema is not None else []
        public = dataset.licence != Licence.CITY_INTERNAL and all(f.sensitivity == Sensitivity.PUBLIC for f in fields)
        g.add((uri, DCTERMS.accessRights, self.rights("public" if public else "restricted")))
        g.add((uri, DCAT.distribution, self._distribution(dataset, fields)))
        quality = dataset_quality(dataset)
        if quality is not None and quality.score is not None and quality.checked_at is not None:
            measurement = BNode()
            g.add((uri, DQV.hasQualityMeasurement, measurement))
            g.add((measurement, RDF.type, DQV.QualityMeasurement))
            g.add((measurement, DQV.computedOn, uri))
            g.add((measurement, DQV.isMeasurementOf, self._quality_metric()))
            g.add((measurement, DQV.value, Literal(Decimal(f"{quality.score:g}"), datatype=XSD.decimal)))
            g.add((measurement, PROV.generatedAtTime, _when(quality.checked_at)))
        return uri

    def _quality_metric(self) -> URIRef:
        """The exchange's one quality metric: the share of rule checks passed (0-100)."""
        metric = self.ns.qualityScore
        if self._once(metric):
            self.g.add((metric, RDF.type, DQV.Metric))
            self.g.add((metric, SKOS.prefLabel, _en("Quality score")))
            self.g.add((metric, SKOS.definition, _en(
                "The share of its quality rules' checks that the dataset's last ingest passed, from 0 to 100 "
                "(each rule weighs the same: a record rule by the share of records that pass it).")))
            self.g.add((metric, DQV.expectedDataType, XSD.decimal))
        return metric

    def _identifier(self, dataset: Dataset) -> BNode:
        node = BNode()
        self.g.add((node, RDF.type, ADMS.Identifier))
        self.g.add((node, SKOS.notation, Literal(dataset.slug)))
        return node

    def _page(self, url: str, title: str) -> URIRef:
        uri = URIRef(url)
        self.g.add((uri, RDF.type, FOAF.Document))
        return uri

    def _contact(self, dataset: Dataset) -> BNode:
        assert dataset.contact is not None
        node = BNode()
        self.g.add((node, RDF.type, VCARD.Kind))
        self.g.add((node, RDF.type, VCARD.Individual))
        self.g.add((node, VCARD.fn, Literal(dataset.contact.get_full_name() or dataset.contact.get_username())))
        email = dataset.contact.email or dataset.department.contact_email
        if email:
            self.g.add((node, VCARD.hasEmail, URIRef(f"mailto:{email}")))
        self.g.add((node, VCARD["organization-name"], Literal(dataset.department.name)))
        return node

    def _distribution(self, dataset: Dataset, fields: list[Field]) -> URIRef:
        g = self.g
        base = f"{_site()}/api/v1/datasets/{dataset.pk}"
        uri = URIRef(f"{dataset_uri(dataset)}#records")
        g.add((uri, RDF.type, DCAT.Distribution))
        g.add((uri, DCTERMS.title, _en(f"{dataset.title} (records)")))
        g.add((uri, DCTERMS.description, _en(
            "Records through the exchange's API; each caller receives only the fields their grants allow.")))
        g.add((uri, DCAT.accessURL, URIRef(f"{base}/records/")))
        g.add((uri, DCAT.downloadURL, URIRef(f"{base}/export/?format=csv")))
        g.add((uri, DCTERMS.license, self.licence(dataset.licence)))
        if self._once(CSV_FORMAT):
            g.add((CSV_FORMAT, RDF.type, DCTERMS.MediaTypeOrExtent))
        if self._once(CSV_MEDIA_TYPE):
            g.add((CSV_MEDIA_TYPE, RDF.type, DCTERMS.MediaType))
        g.add((uri, DCTERMS.format, CSV_FORMAT))
        g.add((uri, DCAT.mediaType, CSV_MEDIA_TYPE))
        if dataset.current_schema is not None:
            g.add((uri, DCTERMS.conformsTo, self._schema(dataset, fields)))
        return uri

    def _schema(self, dataset: Dataset, fields: list[Field]) -> URIRef:
        g = self.g
        assert dataset.current_schema is not None
        uri = URIRef(f"{_site()}/api/v1/datasets/{dataset.pk}/schema/versions/#v{dataset.current_schema.number}")
        g.add((uri, RDF.type, DCTERMS.Standard))
        g.add((uri, RDF.type, CSVW.Schema))
        g.add((uri, DCTERMS.title, _en(f"Field schema of {dataset.title}, version {dataset.current_schema.number}")))
        keys = [f.name for f in fields if f.is_key]
        if keys:
            g.add((uri, CSVW.primaryKey, Literal(" ".join(keys))))
        for field in fields:
            column = URIRef(f"{uri}-{field.name}")
            g.add((uri, CSVW.column, column))
            g.add((column, RDF.type, CSVW.Column))
            g.add((column, CSVW.name, Literal(field.name)))
            g.add((column, CSVW.datatype, XSD_TYPES[FieldType(field.type)]))
            g.add((column, CSVW.required, Literal(not field.nullable)))
            if field.description:
                g.add((column, DCTERMS.description, _en(field.description)))
            if field.unit:
                g.add((column, self.ns.unit, Literal(field.unit)))
            g.add((column, self.ns.sensitivity, Literal(field.sensitivity)))
            g.add((column, self.ns.position, Literal(field.position)))
        return uri


def catalog_graph(datasets: Iterable[Dataset]) -> Graph:
    builder = CatalogGraph()
    builder.catalog(datasets)
    return builder.g


def dataset_graph(dataset: Dataset) -> Graph:
    builder = CatalogGraph()
    builder.dataset(dataset)
    return builder.g


def serialize(graph: Graph, fmt: str) -> str:
    rdf_format, _ = FORMATS[fmt]
    if rdf_format == "json-ld":
        return graph.serialize(format="json-ld", context=CONTEXT, indent=2)
    return graph.serialize(format=rdf_format)
